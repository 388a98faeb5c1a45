"""`downsample` and `pyramid`: value rules on synthetic data with known answers, and the real CLI on a crop of the
packaged Lucchi sample (odd shape 19 x 71 x 90, offset on the 40 nm grid)."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import zarr
from funlib.persistence import open_ds

from incasem_like.core.errors import UserError
from incasem_like.core.geometry import to_world
from incasem_like.stages.downsample import listed_levels, open_level
from incasem_like.store.datasets import DatasetPath, create_dataset, dataset_meta, open_dataset, update_dataset_meta
from tests.conftest import REPO, SHARED_DATA, run_cli, run_cli_in_process
from tests.ops.test_downsample import mean_reference, mode_reference
from tests.toy_stages import SlowDownsampleStage, SlowPyramidLevelStage, kill_midway

SAMPLE = REPO / "incasem_like/sample_data/lucchi_crop"
CROP = ("--roi", 8, 128, 192, 19, 71, 90)  # voxels of the 40 x 384 x 384 sample; mitochondria cover ~40%
OFFSET = (40, 640, 960)  # nm: the crop's corner, a multiple of 40 nm
BLOCKS = ("--block", 16, "--chunk", 8)


# --- reference rules, written the slow obvious way -------------------------------------------------------------


# --- the pure value rules ----------------------------------------------------------------------------------------


# --- the commands on a crop of the real sample ------------------------------------------------------------------
@pytest.fixture(scope="module")
def source_cell(tmp_path_factory) -> Path:
    cell = tmp_path_factory.mktemp("source") / "cell.zarr"
    for src, name, extra in ((SAMPLE / "raw", "raw", ()), (SAMPLE / "mito", "labels/mito", ("--labels",))):
        result = run_cli(
            "convert", src, cell / "volumes" / name, "--voxel-size", 5, 5, 5, "--chunk", 8, "--quiet", *CROP, *extra
        )
        assert result.returncode == 0, result.stderr
    return cell


@pytest.fixture
def cell(source_cell, tmp_path) -> Path:
    return Path(shutil.copytree(source_cell, tmp_path / "cell.zarr"))


def read(path) -> np.ndarray:
    array = open_dataset(path)
    return array[array.roi]


def counts(stdout: str, line: int = 0) -> tuple[int, int]:
    text = [row for row in stdout.splitlines() if "blocks processed" in row][line]
    return tuple(int(text.split(word)[0].split()[-1]) for word in (" blocks processed", " skipped"))


def one_line_error(result, expected: str) -> None:
    assert result.returncode == 2, result.stdout + result.stderr
    assert expected in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr


def add_dataset(cell: Path, name: str, data: np.ndarray, offset=(0, 0, 0), **meta) -> Path:
    path = DatasetPath(cell, name)
    create_dataset(path, data.shape, to_world((5, 5, 5)), to_world(offset), data.dtype, (8, 8, 8)).data[...] = data
    update_dataset_meta(path, **{"complete": True, **meta})
    return cell / name


@pytest.mark.parametrize("command", ["downsample", "pyramid"])
def test_help_shows_examples(command):
    result = run_cli(command, "--help")
    assert result.returncode == 0
    assert "examples:" in result.stdout and f"incasem-like {command} " in result.stdout.split("examples:")[1]


def test_downsample_image_labels_and_override(cell):
    raw, mito = cell / "volumes/raw", cell / "volumes/labels/mito"

    result = run_cli("downsample", raw, cell / "volumes/raw_2x", *BLOCKS, "--workers", 2, "--quiet")

    assert result.returncode == 0, result.stderr
    out = open_dataset(cell / "volumes/raw_2x")
    assert (out.shape, out.dtype, out.chunk_shape) == ((10, 36, 45), np.uint8, (8, 8, 8))
    assert out.voxel_size_nm == (10, 10, 10) and out.offset_nm == OFFSET
    np.testing.assert_array_equal(out[out.roi], mean_reference(read(raw), 2))
    assert dataset_meta(DatasetPath.parse(cell / "volumes/raw_2x"))["kind"] == "image"
    funlib_view = open_ds(str(cell / "volumes/raw_2x/s0"))
    assert (funlib_view.voxel_size, funlib_view.offset) == (to_world((10, 10, 10)), to_world(OFFSET))

    result = run_cli("downsample", mito, cell / "volumes/labels/mito_2x", *BLOCKS, "--quiet")  # kind: labels
    assert result.returncode == 0, result.stderr
    labels = read(cell / "volumes/labels/mito_2x")
    np.testing.assert_array_equal(labels, mode_reference(read(mito), 2))
    assert set(np.unique(labels)) == {0, 1} and abs(labels.mean() - read(mito).mean()) < 0.02
    assert dataset_meta(DatasetPath.parse(cell / "volumes/labels/mito_2x"))["kind"] == "labels"

    result = run_cli("downsample", raw, cell / "volumes/raw_mode4", "--factor", 4, "--labels", *BLOCKS, "--quiet")
    assert result.returncode == 0, result.stderr
    out = open_dataset(cell / "volumes/raw_mode4")
    assert out.shape == (5, 18, 23) and out.voxel_size_nm == (20, 20, 20)
    np.testing.assert_array_equal(out[out.roi], mode_reference(read(raw), 4))


def test_per_axis_factors_for_anisotropic_voxels(cell):
    raw, mito = cell / "volumes/raw", cell / "volumes/labels/mito"
    for source, name, reference in ((raw, "raw_yx", mean_reference), (mito, "labels/mito_yx", mode_reference)):
        out = cell / f"volumes/{name}"
        result = run_cli("downsample", source, out, "--factor", 1, 2, 2, *BLOCKS, "--workers", 2, "--quiet")
        assert result.returncode == 0, result.stderr
        volume = open_dataset(out)
        assert volume.voxel_size_nm == (5, 10, 10) and volume.offset_nm == OFFSET and volume.shape == (19, 36, 45)
        np.testing.assert_array_equal(volume[volume.roi], reference(read(source), (1, 2, 2)))
    assert dataset_meta(DatasetPath.parse(cell / "volumes/raw_yx"))["source"]["downsample"]["factor"] == [1, 2, 2]


def test_killed_downsample_resumes_skipping_finished_blocks(cell):
    raw, out = cell / "volumes/raw", cell / "volumes/raw_2x"
    kill_midway(SlowDownsampleStage(input=str(raw), output=str(out), kind="image", block=16, chunk=8))
    with pytest.raises(UserError, match="incomplete"):
        open_dataset(out)

    result = run_cli("downsample", raw, out, *BLOCKS, "--workers", 2, "--quiet")

    assert result.returncode == 0, result.stderr
    processed, skipped = counts(result.stdout)
    assert skipped >= 2 and processed >= 1 and processed + skipped == 1 * 3 * 3, result.stdout
    np.testing.assert_array_equal(read(out), mean_reference(read(raw), 2))


def test_existing_downsample_output_is_kept_unless_overwrite(cell):
    raw, out = cell / "volumes/raw", cell / "volumes/raw_2x"
    assert run_cli("downsample", raw, out, *BLOCKS, "--quiet").returncode == 0
    before = read(out)

    refused = run_cli("downsample", raw, out, "--factor", 4, *BLOCKS, "--quiet")
    one_line_error(refused, "pass --overwrite")
    np.testing.assert_array_equal(read(out), before)

    again = run_cli("downsample", raw, out, *BLOCKS, "--quiet")
    assert again.returncode == 0 and "already complete" in again.stdout

    replaced = run_cli("downsample", raw, out, "--factor", 4, *BLOCKS, "--quiet", "--overwrite")
    assert replaced.returncode == 0, replaced.stderr
    np.testing.assert_array_equal(read(out), mean_reference(read(raw), 4))


BAD_DOWNSAMPLE = {
    "missing": ("volumes/nothing", (), "volumes/nothing: no such dataset"),
    "float64 image": ("volumes/f64", (), "dtype float64 is not an image dtype"),
    "float labels": ("volumes/f32", ("--labels",), "labels must be integers, found float32"),
    "no kind": ("volumes/foreign", (), "records no kind"),
    "incomplete": ("volumes/half", (), "is incomplete"),
    "offset off the 2x grid": ("volumes/shifted", (), "is not a multiple of the 2x voxel size"),
    "factor 1": ("volumes/raw", ("--factor", 1), "--factor 1: must be an integer >= 2"),
    "factor 1.5": ("volumes/raw", ("--factor", 1.5), "--factor 1.5: must be an integer >= 2"),
    "factor two": ("volumes/raw", ("--factor", "two"), "--factor two: must be an integer >= 2"),
    "block": ("volumes/raw", ("--block", 12), "--block 12 must be a positive multiple of --chunk 8"),
}


@pytest.mark.parametrize("problem", sorted(BAD_DOWNSAMPLE))
def test_bad_downsample_input_fails_with_one_line_and_writes_nothing(cell, problem, capsys):
    add_dataset(cell, "volumes/f64", np.zeros((4, 4, 4), np.float64), kind="image")
    add_dataset(cell, "volumes/f32", np.zeros((4, 4, 4), np.float32), kind="image")
    add_dataset(cell, "volumes/foreign", np.zeros((4, 4, 4), np.uint8))
    add_dataset(cell, "volumes/half", np.zeros((4, 4, 4), np.uint8), kind="image", complete=False)
    add_dataset(cell, "volumes/shifted", np.zeros((4, 4, 4), np.uint8), offset=(5, 0, 0), kind="image")
    source, extra, expected = BAD_DOWNSAMPLE[problem]

    result = run_cli_in_process(capsys, "downsample", cell / source, cell / "volumes/out", "--chunk", 8, *extra)

    one_line_error(result, expected)
    assert not (cell / "volumes/out").exists()


def test_output_must_be_apart_from_the_input(cell, capsys):
    for out in ("volumes/raw", "volumes/raw/s1", "volumes"):
        result = run_cli_in_process(capsys, "downsample", cell / "volumes/raw", cell / out)
        one_line_error(result, "choose an output apart from it")
    assert listed_levels(DatasetPath(cell, "volumes/raw")) == 1 and read(cell / "volumes/raw").shape == (19, 71, 90)


# --- pyramids ---------------------------------------------------------------------------------------------------
def multiscale(dataset: Path) -> list[dict]:
    return zarr.open_group(dataset, mode="r").attrs["ome"]["multiscales"][0]["datasets"]


def level(dataset: Path, k: int) -> np.ndarray:
    array = open_level(DatasetPath.parse(dataset), k)
    return array[array.roi]


def test_pyramid_levels_metadata_data_and_reruns(cell):
    raw = cell / "volumes/raw"
    s0 = read(raw)

    result = run_cli("pyramid", raw, "--levels", 2, *BLOCKS, "--workers", 2, "--quiet")

    assert result.returncode == 0, result.stderr
    assert [d["path"] for d in multiscale(raw)] == ["s0", "s1", "s2"]
    for k, entry in enumerate(multiscale(raw)):
        scale = 5.0 * 2**k
        assert entry["coordinateTransformations"] == [
            {"type": "scale", "scale": [scale] * 3},
            {"type": "translation", "translation": [o + scale / 2 for o in OFFSET]},  # centre of the first voxel
        ]
        funlib_view = open_ds(str(raw / f"s{k}"))
        assert (funlib_view.voxel_size, funlib_view.offset) == (to_world((5 * 2**k,) * 3), to_world(OFFSET))
        assert funlib_view.axis_names == ["z", "y", "x"] and funlib_view.units == ["fm"] * 3
    np.testing.assert_array_equal(level(raw, 0), s0)
    np.testing.assert_array_equal(level(raw, 1), mean_reference(s0, 2))
    np.testing.assert_array_equal(level(raw, 2), mean_reference(level(raw, 1), 2))
    assert level(raw, 2).shape == (5, 18, 23) and zarr.open_array(raw / "s2").chunks == (5, 8, 8)
    assert dataset_meta(DatasetPath.parse(raw))["complete"] is True
    assert json.loads((raw / ".incasem_run/s1/summary.json").read_text())["complete"]
    assert json.loads((raw / ".incasem_run/summary.json").read_text())["task"] == "convert"  # s0's state untouched

    stamps = {p: p.stat().st_mtime_ns for p in raw.rglob("*") if p.is_file()}
    again = run_cli("pyramid", raw, "--levels", 2, *BLOCKS, "--quiet")
    assert again.returncode == 0 and "nothing to do" in again.stdout, again.stderr
    assert {p: p.stat().st_mtime_ns for p in raw.rglob("*") if p.is_file()} == stamps

    more = run_cli("pyramid", raw, "--levels", 3, *BLOCKS, "--quiet")
    assert more.returncode == 0, more.stderr
    assert "/s3:" in more.stdout and "/s1:" not in more.stdout and "/s2:" not in more.stdout
    assert [d["path"] for d in multiscale(raw)] == ["s0", "s1", "s2", "s3"]
    np.testing.assert_array_equal(level(raw, 3), mean_reference(level(raw, 2), 2))
    assert all(stamps[p] == p.stat().st_mtime_ns for p in stamps if "/s1/" in str(p))


def test_label_pyramid_keeps_label_values(cell):
    mito = cell / "volumes/labels/mito"

    result = run_cli("pyramid", mito, "--levels", 2, *BLOCKS, "--quiet")

    assert result.returncode == 0, result.stderr
    np.testing.assert_array_equal(level(mito, 1), mode_reference(level(mito, 0), 2))
    np.testing.assert_array_equal(level(mito, 2), mode_reference(level(mito, 1), 2))
    assert set(np.unique(level(mito, 2))) == {0, 1}


def test_killed_pyramid_is_not_listed_and_resumes(cell):
    raw = cell / "volumes/raw"
    kill_midway(SlowPyramidLevelStage(dataset=str(raw), level=1, kind="image", block=16, chunk=8))
    assert [d["path"] for d in multiscale(raw)] == ["s0"] and (raw / "s1").exists()

    changed = run_cli("pyramid", raw, "--levels", 2, "--block", 8, "--chunk", 8, "--quiet")
    one_line_error(changed, "raw/s1 already exists and was not written by this exact command; pass --overwrite")

    result = run_cli("pyramid", raw, "--levels", 2, *BLOCKS, "--workers", 2, "--quiet")

    assert result.returncode == 0, result.stderr
    processed, skipped = counts(result.stdout, line=0)
    assert skipped >= 2 and processed >= 1 and processed + skipped == 1 * 3 * 3, result.stdout
    assert counts(result.stdout, line=1) == (1 * 2 * 2, 0)
    assert [d["path"] for d in multiscale(raw)] == ["s0", "s1", "s2"]
    np.testing.assert_array_equal(level(raw, 1), mean_reference(read(raw), 2))
    np.testing.assert_array_equal(level(raw, 2), mean_reference(level(raw, 1), 2))


def test_existing_levels_are_recomputed_only_with_overwrite(cell):
    raw = cell / "volumes/raw"
    assert run_cli("pyramid", raw, "--levels", 3, *BLOCKS, "--quiet").returncode == 0
    expected = [level(raw, k) for k in (1, 2)]

    kept = run_cli("pyramid", raw, "--levels", 2, "--block", 4, "--chunk", 4, "--quiet")
    assert kept.returncode == 0 and "nothing to do" in kept.stdout
    assert zarr.open_array(raw / "s1").chunks == (8, 8, 8)

    redone = run_cli("pyramid", raw, "--levels", 2, "--block", 4, "--chunk", 4, "--quiet", "--overwrite")

    assert redone.returncode == 0, redone.stderr
    assert zarr.open_array(raw / "s1").chunks == (4, 4, 4)
    assert [d["path"] for d in multiscale(raw)] == ["s0", "s1", "s2"] and not (raw / "s3").exists()
    for k, data in zip((1, 2), expected):
        np.testing.assert_array_equal(level(raw, k), data)


BAD_PYRAMID = {
    "missing": ("volumes/nothing", (), "volumes/nothing: no such dataset"),
    "levels 0": ("volumes/raw", ("--levels", 0), "--levels 0: must be an integer >= 1"),
    "levels x": ("volumes/raw", ("--levels", "x"), "--levels x: must be an integer >= 1"),
    "too many levels": ("volumes/raw", ("--levels", 9), "--levels 9: level s8 of"),
    "float64 image": ("volumes/f64", (), "dtype float64 is not an image dtype"),
    "incomplete": ("volumes/half", (), "is incomplete"),
    "offset off the coarsest grid": ("volumes/raw", ("--levels", 4), "not a multiple of the level s4 voxel size"),
    "foreign s1": ("volumes/raw", ("--levels", 2), "raw/s1 already exists and was not written by this exact command"),
    "block": ("volumes/raw", ("--block", 12), "--block 12 must be a positive multiple of --chunk 8"),
}


@pytest.mark.parametrize("problem", sorted(BAD_PYRAMID))
def test_bad_pyramid_input_fails_with_one_line_and_changes_nothing(cell, problem, capsys):
    add_dataset(cell, "volumes/f64", np.zeros((4, 4, 4), np.float64), kind="image")
    add_dataset(cell, "volumes/half", np.zeros((4, 4, 4), np.uint8), kind="image", complete=False)
    dataset, extra, expected = BAD_PYRAMID[problem]
    if problem == "foreign s1":
        zarr.open_group(cell / dataset, mode="r+").create_array("s1", shape=(2, 2, 2), dtype=np.uint8, fill_value=7)
    before = {p: p.read_bytes() for p in (cell / "volumes/raw").rglob("*") if p.is_file()}

    result = run_cli(
        "pyramid", cell / dataset, "--chunk", 8, *(extra if "--levels" in extra else ("--levels", 1, *extra))
    )

    one_line_error(result, expected)
    assert {p: p.read_bytes() for p in (cell / "volumes/raw").rglob("*") if p.is_file()} == before
    assert not (cell / dataset / ".incasem_run" / "s1").exists()


@pytest.mark.slow
def test_lucchi_pyramid(tmp_path):
    raw = tmp_path / "cell.zarr/volumes/raw"
    convert = run_cli(
        "convert", SHARED_DATA / "lucchi_pp_train/raw", raw, "--voxel-size", 5, 5, 5, "--workers", 2, "--quiet"
    )
    assert convert.returncode == 0, convert.stderr

    result = run_cli("pyramid", raw, "--levels", 2, "--workers", 2, "--quiet")

    assert result.returncode == 0, result.stderr
    assert [level(raw, k).shape for k in range(3)] == [(165, 768, 1024), (83, 384, 512), (42, 192, 256)]
    np.testing.assert_array_equal(level(raw, 1)[:10, :20, :20], mean_reference(level(raw, 0)[:20, :40, :40], 2))
    assert abs(level(raw, 2).mean() - level(raw, 0).mean()) < 0.5
