import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
import zarr
from funlib.persistence import open_ds

from incasem_like.core.errors import UserError
from incasem_like.core.geometry import to_world
from incasem_like.stages.convert import TiffStack
from incasem_like.store.datasets import DatasetPath, dataset_meta, open_dataset
from tests.conftest import SHARED_DATA, run_cli, write_slices
from tests.toy_stages import SlowConvertStage, kill_midway


def read_output(path) -> np.ndarray:
    array = open_dataset(path)
    return array[array.roi]


def convert(src, out, *extra):
    return run_cli("convert", src, out, "--voxel-size", 5, 5, 5, "--quiet", *extra)


def test_slices_are_ordered_by_the_number_in_their_name(tmp_path):
    folder = tmp_path / "slices"
    for number in range(1, 11):
        folder.mkdir(exist_ok=True)
        tifffile.imwrite(folder / f"slice_{number}.tif", np.zeros((4, 4), np.uint8))
    names = [p.name for p in TiffStack.locate(folder).files]
    assert names[:3] == ["slice_1.tif", "slice_2.tif", "slice_3.tif"] and names[-1] == "slice_10.tif"


def test_slice_folder_converts_bit_identically_with_ome_metadata(tmp_path, volume):
    write_slices(tmp_path / "slices", volume)  # slice_0 .. slice_20: lexical order would be wrong
    out = tmp_path / "cell.zarr/volumes/raw"

    result = convert(tmp_path / "slices", out, "--chunk", 8, "--workers", 2, "--offset", 10, 20, 30)

    assert result.returncode == 0, result.stderr
    assert "wrote" in result.stdout and "3 blocks processed" in result.stdout
    np.testing.assert_array_equal(read_output(out), volume)
    multiscale = zarr.open_group(out, mode="r").attrs["ome"]["multiscales"][0]
    assert [(a["name"], a["type"], a["unit"]) for a in multiscale["axes"]] == [
        (axis, "space", "nanometer") for axis in "zyx"
    ]
    assert multiscale["datasets"][0]["coordinateTransformations"] == [
        {"type": "scale", "scale": [5.0, 5.0, 5.0]},
        {"type": "translation", "translation": [12.5, 22.5, 32.5]},  # centre of the first voxel
    ]
    funlib_view = open_ds(str(out / "s0"))
    # funlib's attributes are in the integer world unit, femtometres
    assert (funlib_view.voxel_size, funlib_view.offset) == (to_world((5, 5, 5)), to_world((10, 20, 30)))
    assert funlib_view.axis_names == ["z", "y", "x"] and funlib_view.units == ["fm"] * 3
    summary = json.loads((out / ".incasem_run/summary.json").read_text())
    assert summary["blocks_processed"] == 3 and summary["voxels_total"] == volume.size and summary["complete"]


@pytest.mark.parametrize("bigtiff", [False, True])
def test_multipage_tiff(tmp_path, volume, bigtiff):
    tifffile.imwrite(tmp_path / "stack.tif", volume, bigtiff=bigtiff, compression="zlib")
    result = convert(tmp_path / "stack.tif", tmp_path / "c.zarr/volumes/raw", "--chunk", 8)
    assert result.returncode == 0, result.stderr
    np.testing.assert_array_equal(read_output(tmp_path / "c.zarr/volumes/raw"), volume)


def test_uint16_is_kept(tmp_path, rng):
    volume = rng.integers(0, 65536, size=(5, 9, 11), dtype=np.uint16)
    write_slices(tmp_path / "slices", volume)
    assert convert(tmp_path / "slices", tmp_path / "c.zarr/raw").returncode == 0
    output = read_output(tmp_path / "c.zarr/raw")
    assert output.dtype == np.uint16
    np.testing.assert_array_equal(output, volume)


def test_binary_label_masks_become_zero_one(tmp_path, rng):
    mask = (rng.random((6, 10, 12)) > 0.7).astype(np.uint8) * 255
    write_slices(tmp_path / "mito", mask)
    result = convert(tmp_path / "mito", tmp_path / "c.zarr/volumes/labels/mito", "--labels")
    assert result.returncode == 0, result.stderr
    output = read_output(tmp_path / "c.zarr/volumes/labels/mito")
    assert output.dtype == np.uint8
    np.testing.assert_array_equal(output, mask // 255)
    meta = dataset_meta(DatasetPath.parse(tmp_path / "c.zarr/volumes/labels/mito"))
    assert meta["kind"] == "labels" and meta["source"]["label_mode"] == "binary_labels"


def test_other_integer_labels_are_kept(tmp_path, rng):
    labels = rng.choice(np.array([0, 1, 2, 255, 300], np.uint16), size=(6, 10, 12))
    write_slices(tmp_path / "labels", labels)
    assert convert(tmp_path / "labels", tmp_path / "c.zarr/volumes/labels/er", "--labels").returncode == 0
    output = read_output(tmp_path / "c.zarr/volumes/labels/er")
    assert output.dtype == np.uint16
    np.testing.assert_array_equal(output, labels)


def test_crop_is_placed_in_the_original_frame_and_recorded(tmp_path, volume):
    write_slices(tmp_path / "slices", volume)
    out = tmp_path / "c.zarr/volumes/raw"
    result = convert(tmp_path / "slices", out, "--offset", 100, 0, 0, "--roi", 3, 4, 5, 10, 20, 30, "--chunk", 4)
    assert result.returncode == 0, result.stderr
    array = open_dataset(out)
    assert array.offset_nm == (100 + 15, 20, 25) and tuple(array.shape) == (10, 20, 30)
    np.testing.assert_array_equal(array[array.roi], volume[3:13, 4:24, 5:35])
    source = dataset_meta(DatasetPath.parse(out))["source"]
    assert source["shape_voxels"] == list(volume.shape)
    assert (source["crop_offset_voxels"], source["crop_shape_voxels"]) == ([3, 4, 5], [10, 20, 30])
    assert source["frame_offset_nm"] == [100, 0, 0]


def test_killed_run_resumes_skipping_finished_blocks(tmp_path, volume):
    write_slices(tmp_path / "slices", volume)
    out = tmp_path / "c.zarr/volumes/raw"
    kill_midway(SlowConvertStage(source=str(tmp_path / "slices"), output=str(out), voxel_size=(5, 5, 5), chunk=4))
    with pytest.raises(UserError, match="incomplete"):
        open_dataset(out)

    result = convert(tmp_path / "slices", out, "--chunk", 4)

    assert result.returncode == 0, result.stderr
    processed, skipped = (int(result.stdout.split(word)[0].split()[-1]) for word in (" blocks processed", " skipped"))
    assert skipped >= 2 and processed >= 1 and processed + skipped == 6, result.stdout
    np.testing.assert_array_equal(read_output(out), volume)


def test_failing_block_exits_nonzero_and_a_rerun_finishes(tmp_path, volume):
    paths = write_slices(tmp_path / "slices", volume)
    original = paths[9].read_bytes()
    with tifffile.TiffFile(paths[9]) as tif:
        start, length = tif.pages[0].dataoffsets[0], tif.pages[0].databytecounts[0]
    corrupted = bytearray(original)
    corrupted[start + 2 : start + length] = bytes(length - 2)  # keep the zlib header, zero the stream
    paths[9].write_bytes(bytes(corrupted))
    out = tmp_path / "c.zarr/volumes/raw"

    result = convert(tmp_path / "slices", out, "--chunk", 4, "--workers", 2)

    assert result.returncode == 1
    assert "1 of 6 blocks failed" in result.stderr and "slice_9.tif: cannot decode slice 9" in result.stderr
    assert "voxels [8:12, 0:37, 0:45]" in result.stderr  # the failed block's write ROI
    assert dataset_meta(DatasetPath.parse(out))["complete"] is False

    paths[9].write_bytes(original)
    result = convert(tmp_path / "slices", out, "--chunk", 4, "--workers", 2)
    assert result.returncode == 0, result.stderr
    assert "1 blocks processed, 5 skipped" in result.stdout
    np.testing.assert_array_equal(read_output(out), volume)


def _rgb(folder: Path) -> None:
    tifffile.imwrite(folder / "slice_1.tif", np.zeros((8, 8, 3), np.uint8), photometric="rgb")


def _truncate(folder: Path) -> None:
    path = folder / "slice_1.tif"
    path.write_bytes(path.read_bytes()[:-40])


BAD_SOURCES = {
    "shape": (lambda f: tifffile.imwrite(f / "slice_1.tif", np.zeros((8, 9), np.uint8)), "slice_1.tif: shape (8, 9)"),
    "dtype": (lambda f: tifffile.imwrite(f / "slice_1.tif", np.zeros((8, 8), np.uint16)), "slice_1.tif: dtype uint16"),
    "unreadable": (lambda f: (f / "slice_1.tif").write_bytes(b"not a tiff at all"), "slice_1.tif: not a readable TIFF"),
    "truncated": (_truncate, "slice_1.tif: truncated"),
    "rgb": (_rgb, "slice_1.tif: 3 samples per pixel"),
}


@pytest.mark.parametrize("problem", sorted(BAD_SOURCES))
def test_bad_slice_is_named_and_nothing_is_written(tmp_path, problem):
    write_slices(tmp_path / "slices", np.zeros((3, 8, 8), np.uint8), compression=None)
    make_bad, expected = BAD_SOURCES[problem]
    make_bad(tmp_path / "slices")

    result = convert(tmp_path / "slices", tmp_path / "c.zarr/volumes/raw")

    assert result.returncode == 2
    assert expected in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not (tmp_path / "c.zarr").exists()


@pytest.mark.parametrize(
    "setup, args, expected",
    [
        ("empty", [], "no .tif/.tiff files"),
        ("missing", [], "no such file or directory"),
        ("float64", [], "images must be uint8, uint16, int8, int16 or float32"),
        ("ok", ["--roi", 0, 0, 0, 4, 8, 8], "lies outside the stack"),
        ("ok", ["--chunk", 0], "--chunk 0: Input should be greater than or equal to 1"),
        ("ok", ["--offset", 1, 0, 0], "not a multiple of the voxel size"),
    ],
)
def test_bad_arguments_fail_with_one_line(tmp_path, setup, args, expected):
    folder = tmp_path / "slices"
    folder.mkdir()
    if setup == "float64":
        write_slices(folder, np.zeros((3, 8, 8), np.float64))
    elif setup == "ok":
        write_slices(folder, np.zeros((3, 8, 8), np.uint8))
    src = tmp_path / "nowhere" if setup == "missing" else folder

    result = convert(src, tmp_path / "c.zarr/volumes/raw", *args)

    assert result.returncode == 2
    assert expected in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not (tmp_path / "c.zarr/volumes/raw").exists()


def test_existing_output_is_kept_unless_overwrite(tmp_path, volume):
    write_slices(tmp_path / "slices", volume)
    out = tmp_path / "c.zarr/volumes/raw"
    assert convert(tmp_path / "slices", out, "--chunk", 8).returncode == 0
    write_slices(tmp_path / "other", volume[::-1].copy())

    refused = convert(tmp_path / "other", out, "--chunk", 8)
    assert refused.returncode == 2 and "pass --overwrite" in refused.stderr
    np.testing.assert_array_equal(read_output(out), volume)

    again = convert(tmp_path / "slices", out, "--chunk", 8)
    assert again.returncode == 0 and "already complete" in again.stdout

    replaced = convert(tmp_path / "other", out, "--chunk", 8, "--overwrite")
    assert replaced.returncode == 0, replaced.stderr
    np.testing.assert_array_equal(read_output(out), volume[::-1])


@pytest.mark.slow
def test_lucchi_raw_converts_bit_identically(tmp_path):
    src = SHARED_DATA / "lucchi_pp_train/raw"
    out = tmp_path / "cell.zarr/volumes/raw"

    result = run_cli("convert", src, out, "--voxel-size", 5, 5, 5, "--workers", 2, "--quiet")

    assert result.returncode == 0, result.stderr
    array = open_dataset(out)
    assert tuple(array.shape) == (165, 768, 1024) and array.voxel_size_nm == (5, 5, 5)
    for z, path in enumerate(sorted(src.glob("*.tif"))):
        np.testing.assert_array_equal(array.data[z], tifffile.imread(path), err_msg=str(path))
