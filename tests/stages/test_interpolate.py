from functools import partial

import numpy as np
import pytest
from scipy import ndimage

from incasem_like.ops.interpolation import interpolate_gap
from incasem_like.store.datasets import DatasetPath, dataset_meta
from incasem_like.workflow.steps import STEP_TYPES
from tests import conftest
from tests.conftest import SHARED_DATA, run_cli, run_cli_in_process
from tests.toy_stages import SlowInterpolateLabelsStage, kill_midway

write_dataset = partial(conftest.write_dataset, offset=(0, 50, 100), chunk=8)
read = conftest.read_dataset
SHAPE = (40, 36, 44)
ANNOTATED = list(range(3, 40, 6))  # 3, 9, ..., 39


def cell(tmp_path, labels_dtype=np.uint16, raw_shape=SHAPE, raw_voxel_size=(5, 5, 5)):
    """Raw and instance labels of smooth blobs (uint16, several ids); returns (labels, raw) paths and the truth."""
    rng = np.random.default_rng(3)
    field = ndimage.gaussian_filter(rng.random(SHAPE), 3)
    truth = field > np.quantile(field, 0.75)
    instances, _ = ndimage.label(truth)
    raw = np.clip(np.where(truth, 80, 170) + rng.normal(0, 12, SHAPE), 0, 255).astype(np.uint8)
    labels = write_dataset(tmp_path / "cell.zarr/volumes/labels/mito", instances.astype(labels_dtype))
    raw_path = tmp_path / "cell.zarr/volumes/raw"
    conftest.write_dataset(raw_path, np.resize(raw, raw_shape), chunk=8, offset=(0, 50, 100), voxel_size=raw_voxel_size)
    return labels, raw_path, truth, raw


def expected(raw: np.ndarray, truth: np.ndarray, annotated: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """The pure function gap by gap along the first axis; nothing (and unsure) outside the annotated slices."""
    labels, sure = np.zeros(truth.shape, np.uint8), np.zeros(truth.shape, np.uint8)
    labels[annotated], sure[annotated] = truth[annotated], 1
    for a, b in zip(annotated, annotated[1:]):
        labels[a + 1 : b], sure[a + 1 : b] = interpolate_gap(raw[a : b + 1], truth[a], truth[b])
    return labels, sure


def interpolate(labels, raw, out, *options):
    result = run_cli("labels", "interpolate", labels, out, "--raw", raw, "--quiet", *options)
    assert result.returncode == 0, result.stderr
    return read(out), read(f"{out}_sure")


def test_blocks_workers_and_a_resume_give_the_whole_volume_result(tmp_path):
    """Slabs of 8 slices (gaps of 6 cross blocks), killed after 2 blocks and resumed on 2 workers, from labels that
    keep only the annotated slices: the same bits as the pure function gap by gap on the whole volume."""
    labels, raw_path, truth, raw = cell(tmp_path)
    sparse_volume = np.zeros(SHAPE, np.uint16)
    sparse_volume[ANNOTATED] = read(labels)[ANNOTATED]
    sparse = write_dataset(tmp_path / "cell.zarr/volumes/labels/sparse", sparse_volume)
    out = tmp_path / "cell.zarr/volumes/dense"
    fields = {"input": str(sparse), "raw": str(raw_path), "output": str(out), "annotated": "3:40:6"}
    kill_midway(SlowInterpolateLabelsStage(**fields, block=8, chunk=8), 2, 0.5)
    resumed = run_cli("labels", "interpolate", sparse, out, "--raw", raw_path, "--annotated-slices", "3:40:6",
                      "--block", 8, "--chunk", 8, "--workers", 2, "--quiet")  # fmt: skip
    assert resumed.returncode == 0 and " 0 skipped" not in resumed.stdout, resumed.stdout + resumed.stderr
    result, sure = read(out), read(f"{out}_sure")
    want = expected(raw, truth, ANNOTATED)
    np.testing.assert_array_equal(result, want[0])
    np.testing.assert_array_equal(sure, want[1])
    assert result.dtype == np.uint8 and not sure[:3].any() and sure[3].all() and 0.9 < sure.mean() < 1
    between = np.setdiff1d(np.arange(3, 40), ANNOTATED)
    assert 2 * (result[between] & truth[between]).sum() / (result[between].sum() + truth[between].sum()) > 0.9
    recorded = dataset_meta(DatasetPath.parse(out))["source"]["labels_interpolate"]
    assert recorded["annotated"] == ANNOTATED and recorded["method"] == "random-walker"


def test_slices_along_another_axis(tmp_path):
    labels, raw_path, truth, raw = cell(tmp_path)
    annotated = [0, 7, 14, 21, 28, 35]
    result = interpolate(labels, raw_path, tmp_path / "cell.zarr/volumes/y", "--annotated-slices", "0,7,14,21,28,35",
                         "--axis", "y", "--block", 8, "--chunk", 8, "--workers", 2)  # fmt: skip
    want = expected(raw.transpose(1, 0, 2), truth.transpose(1, 0, 2), annotated)
    np.testing.assert_array_equal(result[0], want[0].transpose(1, 0, 2))
    np.testing.assert_array_equal(result[1], want[1].transpose(1, 0, 2))


def test_a_pipeline_stage_takes_the_slices_as_text_or_a_list():
    fields = {"command": "labels interpolate", "input": "a.zarr/l", "raw": "a.zarr/r", "output": "a.zarr/o"}
    step = STEP_TYPES["labels interpolate"].model_validate({**fields, "annotated": "0:30:10"})
    assert step.annotated == (0, 10, 20) and step.stage().sure_output == "a.zarr/o_sure"
    assert STEP_TYPES["labels interpolate"].model_validate({**fields, "annotated": [0, 10, 20]}) == step


@pytest.mark.parametrize(
    "setup, options, message",
    [
        ("ok", ["--annotated-slices", "0:50:5"], "--annotated-slices: slice 45 lies beyond"),
        ("ok", ["--annotated-slices", "0:40:0"], "--annotated-slices 0:40:0: the step must be at least 1"),
        ("ok", ["--annotated-slices", "0,5,5"], "--annotated-slices 0,5,5: give each slice once"),
        ("ok", ["--annotated-slices", "a:b"], "--annotated-slices 'a:b': not slice indices"),
        ("float", ["--annotated-slices", "0:40:5"], "dtype float32 is not integer labels"),
        ("raw shape", ["--annotated-slices", "0:40:5"], "differs from"),
        ("raw voxel size", ["--annotated-slices", "0:40:5"], "differs from"),
        ("ok", ["--annotated-slices", "0:40:5", "--axis", "w"], "argument --axis: invalid choice: 'w'"),
        ("existing", ["--annotated-slices", "0:40:5"], "pass --overwrite"),
        ("sure", ["--annotated-slices", "0:40:5"], "the sure mask needs a dataset of its own, not OUT's"),
    ],
)
def test_bad_input_fails_with_one_line_and_writes_nothing(tmp_path, setup, options, message, capsys):
    raw_shape = (40, 36, 40) if setup == "raw shape" else SHAPE
    voxel_size = (10, 5, 5) if setup == "raw voxel size" else (5, 5, 5)
    labels_dtype = np.float32 if setup == "float" else np.uint16
    labels, raw_path, _, _ = cell(tmp_path, labels_dtype, raw_shape, voxel_size)
    out = tmp_path / "cell.zarr/volumes/out"
    if setup == "existing":
        write_dataset(out, np.full(SHAPE, 7, np.uint8))

    if setup == "sure":
        options = [*options, "--sure", str(out)]
    result = run_cli_in_process(capsys, "labels", "interpolate", labels, out, "--raw", raw_path, *options)

    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    if "--axis" in options:  # argparse's own: the usage, then the error
        lines = lines[-1:]
    assert len(lines) == 1 and message in lines[0], result.stderr
    if setup == "existing":
        assert (read(out) == 7).all() and not DatasetPath.parse(f"{out}_sure").exists()
    else:
        assert not DatasetPath.parse(out).exists() and not DatasetPath.parse(f"{out}_sure").exists()


@pytest.mark.slow
def test_lucchi_every_20th_slice_beats_shape_interpolation(tmp_path):
    """A crop of the real data (81 x 256 x 256), every 20th slice annotated: the walker's Dice on the slices in
    between is above shape interpolation's."""
    roi = ("--roi", 0, 256, 256, 81, 256, 256)
    raw, labels = "cell.zarr/volumes/raw", "cell.zarr/volumes/labels/mito"
    for source, target, extra in (("raw", raw, []), ("mito", labels, ["--labels"])):
        data = SHARED_DATA / "lucchi_pp_train" / source
        result = run_cli("convert", data, tmp_path / target, "--voxel-size", 5, 5, 5, *roi, *extra, "--quiet")
        assert result.returncode == 0, result.stderr
    truth = read(tmp_path / labels) > 0
    between = np.ones(81, bool)
    between[::20] = False
    scores = {}
    for method in ("shape", "random-walker"):
        out = tmp_path / f"cell.zarr/volumes/{method}"
        result = interpolate(tmp_path / labels, tmp_path / raw, out, "--annotated-slices", "0:81:20",
                             "--method", method, "--block", 64, "--chunk", 64, "--workers", 2)[0] > 0  # fmt: skip
        overlap = (result[between] & truth[between]).sum()
        scores[method] = 2 * overlap / (result[between].sum() + truth[between].sum())
    assert scores["random-walker"] > scores["shape"] + 0.01, scores
    assert scores["random-walker"] > 0.92, scores
