from functools import partial

import numpy as np
import pytest
import tifffile
from skimage.exposure import equalize_adapthist
from skimage.util import img_as_ubyte

from incasem_like.ops.clahe import needed_range
from incasem_like.stages.clahe import ClaheStage
from incasem_like.store.datasets import DatasetPath, open_dataset
from incasem_like.workflow.demo import SAMPLE
from tests import conftest
from tests.conftest import SHARED_DATA, run_cli, run_cli_in_process
from tests.toy_stages import SlowClaheStage, kill_midway


def sample_raw(shape=(40, 96, 112)) -> np.ndarray:
    """A crop of the embedded Lucchi sample that spans the full 0..255 range (as skimage's stretch assumes)."""
    slices = sorted((SAMPLE / "raw").iterdir(), key=lambda p: p.name)[: shape[0]]
    volume = np.stack([tifffile.imread(p)[: shape[1], : shape[2]] for p in slices])
    volume[0, 0, :2] = (0, 255)
    return volume


write_dataset = partial(conftest.write_dataset, offset=(100, 0, 50), chunk=32)


@pytest.mark.parametrize("kernel", [3, 8, 17, 64])
def test_the_declared_context_covers_every_read(kernel):
    context = ClaheStage(input="c.zarr/volumes/a", output="c.zarr/volumes/b", kernel=kernel).context_voxels()
    reach = 0
    for size in (kernel // 2 + 1, 3 * kernel + 5, 10 * kernel + 3):
        for begin in range(size):
            for end in {begin + 1, min(size, begin + kernel), min(size, begin + 3 * kernel)}:
                low, high = needed_range(begin, end, size, kernel)
                reach = max(reach, begin - low, high - end)
    assert reach <= context and reach > kernel  # the reads reach past one kernel, so one would be too little


def test_cli_default_block_is_the_stages():
    from incasem_like.cli.commands.clahe import CLAHE_BLOCK
    from incasem_like.stages.clahe import ClaheStage

    assert CLAHE_BLOCK == ClaheStage.model_fields["block"].default


def test_cli_blocks_of_any_size_give_the_single_pass_result(tmp_path):
    """The issue's seam measurement, scaled down: kernel 32, blocks 32 and 64 vs one skimage call."""
    volume = sample_raw()
    raw = write_dataset(tmp_path / "cell.zarr/volumes/raw", volume)
    outputs = {}
    for block in (32, 64, 128):
        out = tmp_path / f"cell.zarr/volumes/clahe_{block}"
        result = run_cli("clahe", raw, out, "--kernel", 32, "--block", block, "--chunk", 32, "--workers", 2, "--quiet")
        assert result.returncode == 0, result.stderr
        outputs[block] = open_dataset(out)
    assert outputs[32].offset_nm == (100, 0, 50) and outputs[32].dtype == np.uint8
    single_pass = img_as_ubyte(equalize_adapthist(volume, kernel_size=32, clip_limit=0.02, nbins=256))
    for block, output in outputs.items():
        data = output[output.roi]
        np.testing.assert_array_equal(data, outputs[128][output.roi])
        assert np.abs(data.astype(int) - single_pass).max() <= 2, f"block {block}"


def test_a_per_axis_kernel_for_anisotropic_voxels_gives_the_single_pass_result(tmp_path):
    volume = sample_raw((12, 96, 112))
    raw = write_dataset(tmp_path / "cell.zarr/volumes/raw", volume)
    out = tmp_path / "cell.zarr/volumes/clahe"
    result = run_cli("clahe", raw, out, "--kernel", 4, 32, 32, "--block", 32, "--chunk", 16, "--workers", 2, "--quiet")
    assert result.returncode == 0, result.stderr
    single_pass = img_as_ubyte(equalize_adapthist(volume, kernel_size=(4, 32, 32), clip_limit=0.02, nbins=256))
    assert np.abs(conftest.read_dataset(out).astype(int) - single_pass).max() <= 2


def test_roi_keeps_the_tile_grid_of_the_whole_volume(tmp_path):
    raw = write_dataset(tmp_path / "cell.zarr/volumes/raw", sample_raw())
    full, part = tmp_path / "cell.zarr/volumes/full", tmp_path / "cell.zarr/volumes/part"
    assert run_cli("clahe", raw, full, "--kernel", 32, "--block", 32, "--chunk", 32, "--quiet").returncode == 0
    result = run_cli("clahe", raw, part, "--kernel", 32, "--block", 32, "--chunk", 32, "--roi", 5, 20, 30, 30, 40, 50)
    assert result.returncode == 0, result.stderr
    part = open_dataset(part)
    assert part.offset_nm == (100 + 25, 100, 50 + 150) and part.shape == (30, 40, 50)
    np.testing.assert_array_equal(part[part.roi], open_dataset(full)[part.roi])


def test_killed_run_resumes_with_identical_output(tmp_path):
    raw = write_dataset(tmp_path / "cell.zarr/volumes/raw", sample_raw())
    reference, out = tmp_path / "cell.zarr/volumes/reference", tmp_path / "cell.zarr/volumes/clahe"
    assert run_cli("clahe", raw, reference, "--kernel", 32, "--block", 32, "--chunk", 32, "--quiet").returncode == 0
    kill_midway(SlowClaheStage(input=str(raw), output=str(out), kernel=32, block=32, chunk=32))

    result = run_cli("clahe", raw, out, "--kernel", 32, "--block", 32, "--chunk", 32, "--quiet")

    assert result.returncode == 0, result.stderr
    skipped = int(result.stdout.split(" skipped")[0].split()[-1])
    assert 2 <= skipped < 2 * 3 * 4
    np.testing.assert_array_equal(
        open_dataset(out)[open_dataset(out).roi], open_dataset(reference)[open_dataset(out).roi]
    )


@pytest.mark.parametrize(
    "setup, extra, message",
    [
        ("missing", [], "no such dataset"),
        ("uint16", [], "dtype uint16 is not supported by clahe"),
        ("ok", ["--roi", 0, 0, 0, 41, 8, 8], "lies outside"),
        ("ok", ["--clip", 2], "--clip 2.0: Input should be less than or equal to 1"),
        ("ok", ["--block", 48], "--block 48 must be a positive multiple of --chunk 32"),
        ("existing", [], "pass --overwrite"),
        ("same", [], "the output is the input"),
    ],
)
def test_bad_input_fails_with_one_line_and_writes_nothing(tmp_path, setup, extra, message, capsys):
    volume = sample_raw((8, 16, 16))
    raw = tmp_path / "cell.zarr/volumes/raw"
    if setup != "missing":
        write_dataset(raw, volume.astype(np.uint16) if setup == "uint16" else volume, chunk=8)
    out = raw if setup == "same" else tmp_path / "cell.zarr/volumes/clahe"
    if setup == "existing":
        write_dataset(out, volume, chunk=8)

    result = run_cli_in_process(capsys, "clahe", raw, out, "--kernel", 8, "--chunk", 32, "--block", 32, *extra)

    assert result.returncode == 2
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
    if setup == "existing":
        np.testing.assert_array_equal(open_dataset(out)[open_dataset(out).roi], volume)
    elif setup != "same":
        assert not DatasetPath.parse(out).exists()


@pytest.mark.slow
def test_seams_on_a_256_cube_of_real_data(tmp_path, capsys):
    """The issue's measurement: 256^3 (the 165 Lucchi slices, mirrored to 256), kernel 64, blocks 64 and 128."""
    slices = sorted((SHARED_DATA / "lucchi_pp_train/raw").glob("*.tif"))
    stack = np.stack([tifffile.imread(p)[:256, :256] for p in slices])
    volume = np.concatenate([stack, stack[::-1][1:92]])
    raw = write_dataset(tmp_path / "cell.zarr/volumes/raw", volume, chunk=64)
    single_pass = img_as_ubyte(equalize_adapthist(volume, kernel_size=64, clip_limit=0.02, nbins=256))
    interior = (slice(64, -64),) * 3
    volume_range = (int(volume.min()), int(volume.max()))  # what a single skimage call stretches
    for block in (64, 128):
        out = tmp_path / f"cell.zarr/volumes/clahe_{block}"
        options = ["--kernel", 64, "--block", block, "--chunk", 64, "--intensity-range", *volume_range]
        result = run_cli("clahe", raw, out, *options, "--workers", 2, "--quiet")
        assert result.returncode == 0, result.stderr
        difference = np.abs(open_dataset(out)[open_dataset(out).roi].astype(int) - single_pass)
        with capsys.disabled():
            print(
                f"\nintensity range {volume_range}, block {block}: max |blockwise - single pass| = "
                f"{difference[interior].max()} away from the border, {difference.max()} overall; "
                f"{np.mean(difference > 0):.4%} of voxels differ"
            )
        assert difference[interior].max() <= 2
