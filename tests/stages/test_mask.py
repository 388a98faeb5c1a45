from functools import partial

import numpy as np
import pytest
from pydantic import ValidationError
from scipy import ndimage

from incasem_like.core.errors import UserError
from incasem_like.ops.morphology import cell_mask, cell_mask_context
from incasem_like.stages.mask import MaskStage
from incasem_like.store.datasets import DatasetPath, dataset_meta, open_dataset
from tests import conftest
from tests.conftest import SHARED_DATA, run_cli, run_cli_in_process
from tests.ops.test_morphology import put_ball
from tests.toy_stages import SlowMaskStage, kill_midway

#: small-volume parameters: the method's radii, size thresholds and span limit scaled down to the test volume
PARAMS = ["--min-hole-voxels", 300, "--min-object-voxels", 300, "--max-span", 12]
PURE = dict(min_hole_voxels=300, min_object_voxels=300, max_span=12)


write_dataset = partial(conftest.write_dataset, offset=(50, 0, 100), chunk=16)


read = conftest.read_dataset


def synthetic_raw(seed=0) -> np.ndarray:
    """Noisy cell-like blobs (gray ~100) in bright background (~230), with a small hole (a ball of 123 voxels)
    and a small object (257 voxels) planted across block borders."""
    rng, shape = np.random.default_rng(seed), (32, 40, 48)
    field = ndimage.gaussian_filter(rng.random(shape), 4)
    cell = field > np.quantile(field, 0.5)
    raw = np.where(cell, 100, 230) + rng.integers(-30, 30, size=shape)
    raw[4:28, 4:28, 4:28] = 100  # a cell region with a hole on the block corner (16, 16, 16)
    put_ball(raw, (16, 16, 16), 3, 250)
    raw[17:32, 25:40, 23:42] = 230  # background with an object on the block borders y = 32, x = 32
    put_ball(raw, (26, 34, 32), 4, 100)
    return raw.clip(0, 255).astype(np.uint8)


def whole_volume(raw: np.ndarray, **params) -> np.ndarray:
    """The pure function on the whole volume, zero outside (padded as the blocks at the border are)."""
    context = cell_mask_context(**{k: v for k, v in params.items() if k not in ("gray_min", "gray_max")})
    inner = (slice(context, -context),) * 3
    return cell_mask(np.pad(raw, context), **params)[inner]


def test_the_stage_reads_the_context_its_mask_needs():
    stage = MaskStage(input="c.zarr/volumes/raw", output="c.zarr/volumes/masks/cell", opening_radius=1, max_span=12)
    assert stage.context_voxels() == cell_mask_context(1, 2, max_span=12)


def test_blocks_of_any_size_give_the_whole_volume_result_also_after_a_resume(tmp_path):
    """Blocks of 32 in one run, blocks of 16 killed midway and resumed: both the whole-volume result."""
    raw_volume = synthetic_raw()
    raw = write_dataset(tmp_path / "cell.zarr/volumes/raw", raw_volume)
    expected = whole_volume(raw_volume, **PURE)
    steps_off = whole_volume(raw_volume, **{**PURE, "min_hole_voxels": 0, "min_object_voxels": 0})
    assert (expected > steps_off).sum() >= 80 and (expected < steps_off).sum() >= 250  # holes and objects acted
    out_32, out_16 = tmp_path / "cell.zarr/volumes/masks/cell_32", tmp_path / "cell.zarr/volumes/masks/cell_16"

    result = run_cli("mask", raw, out_32, *PARAMS, "--block", 32, "--chunk", 16, "--workers", 2, "--quiet")
    assert result.returncode == 0, result.stderr
    kill_midway(SlowMaskStage(input=str(raw), output=str(out_16), **PURE, block=16, chunk=16), 2, 0.5)
    resumed = run_cli("mask", raw, out_16, *PARAMS, "--block", 16, "--chunk", 16, "--workers", 2, "--quiet")

    assert resumed.returncode == 0, resumed.stderr
    skipped = int(resumed.stdout.split(" skipped")[0].split()[-1])
    assert 2 <= skipped < 2 * 3 * 3, resumed.stdout
    for out in (out_32, out_16):
        output = open_dataset(out)
        assert output.dtype == np.uint8 and output.offset_nm == (50, 0, 100)
        np.testing.assert_array_equal(output[output.roi], expected, err_msg=str(out))
    assert dataset_meta(DatasetPath.parse(out_16))["kind"] == "mask"


def test_per_axis_radii_for_anisotropic_voxels_give_the_whole_volume_result(tmp_path):
    raw_volume = synthetic_raw()
    raw = write_dataset(tmp_path / "cell.zarr/volumes/raw", raw_volume)
    out = tmp_path / "cell.zarr/volumes/masks/cell"
    radii = {"opening_radius": (0, 2, 2), "closing_radius": (1, 2, 2)}
    result = run_cli("mask", raw, out, *PARAMS, "--opening", 0, 2, 2, "--closing", 1, 2, 2, "--block", 16, "--chunk",
                     16, "--workers", 2, "--quiet")  # fmt: skip
    assert result.returncode == 0, result.stderr
    expected = whole_volume(raw_volume, **PURE, **radii)
    assert (expected != whole_volume(raw_volume, **PURE)).sum() > 50  # in-plane radii act differently
    np.testing.assert_array_equal(read(out), expected)


def test_roi_equals_the_crop_of_the_whole_result(tmp_path):
    raw_volume = synthetic_raw()
    raw = write_dataset(tmp_path / "cell.zarr/volumes/raw", raw_volume)
    out = tmp_path / "cell.zarr/volumes/masks/part"
    result = run_cli("mask", raw, out, *PARAMS, "--block", 16, "--chunk", 16, "--roi", 8, 10, 20, 24, 30, 28)
    assert result.returncode == 0, result.stderr
    np.testing.assert_array_equal(read(out), whole_volume(raw_volume, **PURE)[8:32, 10:40, 20:48])


@pytest.mark.parametrize(
    "setup, extra, message",
    [
        ("missing", [], "no such dataset"),
        ("float32", [], "dtype float32 is not supported by mask (needs uint8 or uint16)"),
        ("ok", ["--roi", 0, 0, 0, 17, 8, 8], "lies outside"),
        ("existing", [], "pass --overwrite"),
        ("ok", ["--gray", 2, 300], "is uint8 (at most 255)"),
    ],
)
def test_bad_input_fails_with_one_line_and_writes_nothing(tmp_path, setup, extra, message, capsys):
    volume = synthetic_raw()[:16, :16, :16]
    raw = tmp_path / "cell.zarr/volumes/raw"
    if setup != "missing":
        write_dataset(raw, volume.astype(np.float32) if setup == "float32" else volume)
    out = tmp_path / "cell.zarr/volumes/masks/cell"
    if setup == "existing":
        write_dataset(out, np.ones((16, 16, 16), np.uint8))

    result = run_cli_in_process(capsys, "mask", raw, out, "--chunk", 16, "--block", 16, "--max-span", 4, *extra)

    assert result.returncode == 2
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
    if setup == "existing":
        assert read(out).all()
    else:
        assert not DatasetPath.parse(out).exists()


@pytest.mark.parametrize(
    "params, message",
    [
        (dict(gray=(100, 50)), "gray 100 50: MIN is above MAX"),
        (dict(gray=(0, 180)), "MIN must be at least 1"),
        (dict(max_span=0), "max_span"),
        (dict(opening_radius=-1), "greater than or equal to 0"),
    ],
)
def test_bad_parameters_are_refused(params, message):
    with pytest.raises((UserError, ValidationError), match=message):
        MaskStage(input="c.zarr/volumes/raw", output="c.zarr/volumes/masks/cell", **params)


@pytest.mark.slow
def test_lucchi_crop_mask_does_not_depend_on_blocks(tmp_path):
    """The method's defaults on real data (context 138): blocks 64 and 128 give the whole-volume result."""
    src = SHARED_DATA / "lucchi_pp_train/raw"
    raw = tmp_path / "cell.zarr/volumes/raw"
    assert run_cli("convert", src, raw, "--voxel-size", 5, 5, 5, "--roi", 0, 0, 0, 64, 128, 192).returncode == 0
    expected = whole_volume(read(raw))
    for block in (64, 128):
        out = tmp_path / f"cell.zarr/volumes/masks/cell_{block}"
        result = run_cli("mask", raw, out, "--block", block, "--chunk", 64, "--workers", 2, "--quiet")
        assert result.returncode == 0, result.stderr
        np.testing.assert_array_equal(read(out), expected, err_msg=f"block {block}")
    assert 0.5 < expected.mean() < 0.95
