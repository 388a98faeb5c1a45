"""`predict` and `threshold`: real daisy workers, real zarr, a tiny real U-Net on crops of the sample data."""

import itertools
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr

from incasem_like.nn.checkpoints import export_weights, save_checkpoint
from incasem_like.nn.inference import predict_region, tta_variants
from incasem_like.nn.model import NetworkConfig, UNet3D, inference_model
from incasem_like.nn.normalization import normalize
from incasem_like.ops.morphology import segment
from incasem_like.stages.predict import PredictStage
from incasem_like.stages.threshold import CleanUp
from incasem_like.store.datasets import DatasetPath, dataset_meta, open_dataset, update_dataset_meta
from tests.conftest import read_dataset, run_cli, run_cli_in_process, write_dataset
from tests.nn.test_model import OPTION_NETWORKS as ONE_OPTION_NETWORKS
from tests.predict_stages import SlowPredictStage
from tests.toy_stages import kill_midway
from tests.training_data import sample_stack

STEP = 8  # output voxels each pass keeps (the tiny network's factor is 4)
TINY = NetworkConfig(feature_maps=3, downsamplings=2, input_shape=(52, 52, 52))  # 52 -> 10, context 21


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A tiny U-Net with random weights, saved as train would (its output bias set so both classes occur)."""
    torch.manual_seed(0)
    model = UNet3D(TINY)
    tile = normalize(np.pad(sample_stack("raw", (26, 52, 52)), ((13, 13), (0, 0), (0, 0)), mode="reflect"))
    with torch.no_grad():
        model.final.bias -= model(torch.from_numpy(tile)[None, None]).median()
    return save_checkpoint(tmp_path_factory.mktemp("run"), model, None, 7, "mito", (5, 5, 5))


@pytest.fixture
def raw(tmp_path) -> DatasetPath:
    """A 20 x 28 x 36 crop of the sample's raw data (odd to the blocks and passes) at a non-zero offset."""
    volume = sample_stack("raw", (20, 28, 36))
    return write_dataset(tmp_path / "cell.zarr/volumes/raw", volume, chunk=8, offset=(50, 100, 150))


def reference_probabilities(checkpoint: Path, raw: np.ndarray) -> np.ndarray:
    """Plain PyTorch sliding window: mirror the volume, one pass every STEP voxels, keep each pass's first STEP."""
    state = torch.load(checkpoint, weights_only=True)
    model = UNet3D(NetworkConfig(**state["network"]))
    model.load_state_dict(state["model"])
    model.eval()
    edge = TINY.input_edge_for(STEP)
    context = (edge - TINY.output_shape((edge,) * 3)[0]) // 2
    passes = [math.ceil(size / STEP) for size in raw.shape]
    pad = [(context, (n - 1) * STEP + edge - context - size) for n, size in zip(passes, raw.shape)]
    padded = np.pad(normalize(raw), pad, mode="reflect")
    result = np.zeros([n * STEP for n in passes], dtype=np.uint8)
    for index in np.ndindex(*passes):
        begin = [i * STEP for i in index]
        tile = torch.from_numpy(np.ascontiguousarray(padded[tuple(slice(b, b + edge) for b in begin)]))
        with torch.no_grad():
            probability = torch.sigmoid(model(tile[None, None]))[0, 0, :STEP, :STEP, :STEP]
        result[tuple(slice(b, b + STEP) for b in begin)] = probability.mul(255).round().to(torch.uint8).numpy()
    return result[tuple(slice(0, size) for size in raw.shape)]


def predict(checkpoint, raw, out, *extra):
    return run_cli(
        "predict", "--checkpoint", checkpoint, "--raw", raw, "--out", out, "--device", "cpu",
        "--step", STEP, "--chunk", 8, "--quiet", *extra,
    )  # fmt: skip


def outputs(out) -> tuple[np.ndarray, np.ndarray]:
    return read_dataset(f"{out}/probabilities"), read_dataset(f"{out}/segmentation")


def test_equals_a_plain_sliding_window_everywhere_including_the_borders(tmp_path, checkpoint, raw):
    out = tmp_path / "cell.zarr/volumes/predictions/run/mito"

    result = predict(checkpoint, raw, out, "--block", 16)

    assert result.returncode == 0, result.stderr
    probabilities, segmentation = outputs(out)
    expected = reference_probabilities(checkpoint, read_dataset(raw))
    np.testing.assert_array_equal(probabilities, expected)
    np.testing.assert_array_equal(segmentation, (expected > 127.5).astype(np.uint8))
    assert 0.05 < segmentation.mean() < 0.95  # both classes, so the comparison means something
    for name in ("probabilities", "segmentation"):
        written = open_dataset(f"{out}/{name}")
        assert written.offset_nm == (50, 100, 150) and written.voxel_size_nm == (5, 5, 5)
    source = dataset_meta(DatasetPath.parse(f"{out}/probabilities"))["source"]
    assert source["model"]["organelle"] == "mito" and source["model"]["iteration"] == 7
    assert source["predict"]["threshold"] == 0.5 and source["dataset"] == str(raw)


def test_workers_and_block_size_do_not_change_a_bit(tmp_path, checkpoint, raw):
    one, two = tmp_path / "cell.zarr/volumes/one", tmp_path / "cell.zarr/volumes/two"

    first = predict(checkpoint, raw, one, "--workers", 1, "--block", 16)
    second = predict(checkpoint, raw, two, "--workers", 2, "--block", 8)

    assert first.returncode == 0 and second.returncode == 0, first.stderr + second.stderr
    for a, b in zip(outputs(one), outputs(two)):
        np.testing.assert_array_equal(a, b)
    summary = zarr.open_group(two / "probabilities", mode="r").attrs.asdict()
    assert summary["incasem_like"]["complete"] is True


def test_roi_on_the_pass_grid_equals_the_whole_prediction_there(tmp_path, checkpoint, raw):
    whole, part = tmp_path / "cell.zarr/volumes/whole", tmp_path / "cell.zarr/volumes/part"
    assert predict(checkpoint, raw, whole, "--block", 16).returncode == 0

    result = predict(checkpoint, raw, part, "--block", 8, "--roi", 8, 8, 16, 12, 20, 20)

    assert result.returncode == 0, result.stderr
    part_probabilities = open_dataset(f"{part}/probabilities")
    assert part_probabilities.offset_nm == (50 + 40, 100 + 40, 150 + 80) and part_probabilities.shape == (
        12,
        20,
        20,
    )
    np.testing.assert_array_equal(
        part_probabilities[part_probabilities.roi], open_dataset(f"{whole}/probabilities")[part_probabilities.roi]
    )


@pytest.mark.slow  # heavy (~30 s): run in CI with -m slow, beside the real-data tests
def test_killed_run_resumes_with_identical_output(tmp_path, checkpoint, raw):
    reference, out = tmp_path / "cell.zarr/volumes/reference", tmp_path / "cell.zarr/volumes/resumed"
    assert predict(checkpoint, raw, reference, "--block", 8).returncode == 0
    stage = PredictStage(
        checkpoint=str(checkpoint), raw=str(raw), output=str(out), step=STEP, block=8, chunk=8, device="cpu"
    )
    kill_midway(SlowPredictStage(**stage.model_dump()), done_blocks=3, seconds_per_block=0.5)

    result = predict(checkpoint, raw, out, "--block", 8)

    assert result.returncode == 0, result.stderr
    skipped = int(result.stdout.split(" skipped")[0].split()[-1])
    assert 3 <= skipped < 3 * 4 * 5
    for a, b in zip(outputs(reference), outputs(out)):
        np.testing.assert_array_equal(a, b)


def test_threshold_reproduces_and_changes_the_segmentation(tmp_path, checkpoint, raw):
    out = tmp_path / "cell.zarr/volumes/predictions/run/mito"
    assert predict(checkpoint, raw, out, "--block", 16).returncode == 0
    probabilities, segmentation = outputs(out)

    same = run_cli("threshold", f"{out}/probabilities", f"{out}/at_0.5", "--chunk", 8, "--block", 16, "--quiet")
    higher = run_cli("threshold", f"{out}/probabilities", f"{out}/at_0.7", "--threshold", 0.7, "--chunk", 8, "--quiet")

    assert same.returncode == 0 and higher.returncode == 0, same.stderr + higher.stderr
    np.testing.assert_array_equal(read_dataset(f"{out}/at_0.5"), segmentation)
    np.testing.assert_array_equal(read_dataset(f"{out}/at_0.7"), (probabilities > 178.5).astype(np.uint8))
    assert read_dataset(f"{out}/at_0.7").sum() < segmentation.sum()


def test_other_voxel_size_warns_and_strict_refuses(tmp_path, checkpoint):
    raw = write_dataset(tmp_path / "cell.zarr/volumes/raw", sample_stack("raw", (8, 16, 16)), chunk=8)
    zarr_attrs = zarr.open_group(raw.group_path, mode="r+")
    ome = zarr_attrs.attrs["ome"]
    ome["multiscales"][0]["datasets"][0]["coordinateTransformations"][0]["scale"] = [8.0, 8.0, 8.0]
    zarr_attrs.attrs["ome"] = ome

    warned = predict(checkpoint, raw, tmp_path / "cell.zarr/volumes/loose")
    refused = predict(checkpoint, raw, tmp_path / "cell.zarr/volumes/strict", "--strict")

    assert warned.returncode == 0 and "differs from the (5, 5, 5) nm the model" in warned.stderr
    assert refused.returncode == 2 and len(refused.stderr.strip().splitlines()) == 1, refused.stderr
    assert "voxel size (8, 8, 8) nm differs" in refused.stderr and "--strict" in refused.stderr
    assert not (tmp_path / "cell.zarr/volumes/strict").exists()


def _foreign_architecture(checkpoint: Path, tmp_path: Path) -> Path:
    state = torch.load(checkpoint, weights_only=True)
    state["network"]["feature_maps"] = 5
    path = tmp_path / "foreign.pt"
    torch.save(state, path)
    return path


@pytest.mark.parametrize(
    "case, message",
    [
        ("no checkpoint", "no such checkpoint file"),
        ("no such bundled model", "no bundled model for 'golgi' (bundled: mito)"),
        ("folder that is no run", "a folder without summary.json"),
        ("not a checkpoint", "not a readable checkpoint"),
        ("foreign architecture", "do not fit the network it describes"),
        ("no raw", "no such dataset"),
        ("float raw", "dtype float32 does not fit"),
        ("roi outside", "lies outside"),
        ("bad step", "--step 6 6 6 must be positive multiples of 4 4 4"),
        ("bad threshold", "--threshold 1.5: Input should be less than 1"),
        ("existing output", "pass --overwrite"),
        ("cuda without a GPU", "torch sees no CUDA GPU"),
    ],
)
def test_bad_input_fails_with_one_line_and_writes_nothing(tmp_path, checkpoint, raw, case, message, capsys):
    if torch.cuda.is_available() and case == "cuda without a GPU":
        pytest.skip("this machine has a GPU")
    out = tmp_path / "cell.zarr/volumes/predictions/run/mito"
    args = {"checkpoint": checkpoint, "raw": raw, "extra": []}
    if case == "no checkpoint":
        args["checkpoint"] = tmp_path / "missing.pt"
    elif case == "no such bundled model":
        args["checkpoint"] = "bundled:golgi"
    elif case == "folder that is no run":
        args["checkpoint"] = tmp_path
    elif case == "not a checkpoint":
        args["checkpoint"] = tmp_path / "notes.pt"
        args["checkpoint"].write_text("not a checkpoint")
    elif case == "foreign architecture":
        args["checkpoint"] = _foreign_architecture(checkpoint, tmp_path)
    elif case == "no raw":
        args["raw"] = tmp_path / "cell.zarr/volumes/raw_clahe"
    elif case == "float raw":
        args["raw"] = write_dataset(tmp_path / "cell.zarr/volumes/float", np.zeros((8, 8, 8), np.float32), chunk=8)
    else:
        args["extra"] = {
            "roi outside": ["--roi", 0, 0, 0, 21, 8, 8],
            "bad step": ["--step", 6],
            "bad threshold": ["--threshold", 1.5],
            "existing output": ["--threshold", 0.6],  # another command on the same output
            "cuda without a GPU": [],
        }[case]
    if case == "existing output":
        assert predict(checkpoint, raw, out).returncode == 0
        before = outputs(out)
    command = ["predict", "--checkpoint", args["checkpoint"], "--raw", args["raw"], "--out", out, "--quiet"]
    command += ["--device", "cuda"] if case == "cuda without a GPU" else ["--device", "cpu", "--step", STEP]

    result = run_cli_in_process(capsys, *command, "--chunk", 8, *args["extra"])

    assert result.returncode == 2, result.stderr
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
    if case == "existing output":
        for a, b in zip(before, outputs(out)):
            np.testing.assert_array_equal(a, b)
    else:
        assert not out.exists()


def test_threshold_refuses_what_is_not_a_probability_map(tmp_path, raw):
    update_dataset_meta(raw, kind="image")

    result = run_cli("threshold", raw, tmp_path / "cell.zarr/volumes/seg", "--chunk", 8, "--quiet")

    assert result.returncode == 2 and "holds image, not probabilities" in result.stderr, result.stderr
    assert not (tmp_path / "cell.zarr/volumes/seg").exists()


#: every network option at once (the per-option exactness of a pass is in test_model), and a slice-wise 2D network
OPTION_NETWORKS = {
    "batch norm, residual, anisotropic, 2.5D": NetworkConfig(
        feature_maps=3,
        downsamplings=2,
        downsample_factors=[(1, 2, 2), (2, 2, 2)],
        kernel_sizes=[(1, 3, 3), (3, 3, 3), (3, 3, 3)],
        normalization="batch",
        residual=True,
        input_slices=3,
        input_shape=(32, 52, 52),
    ),
    "slice-wise 2D": NetworkConfig(**ONE_OPTION_NETWORKS["slice-wise 2D"]),
}


def option_checkpoint(directory: Path, network: NetworkConfig) -> Path:
    """`network` with random weights and batch-norm statistics of a few training passes, saved as train would."""
    torch.manual_seed(0)
    model = UNet3D(network)
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(2, 1, *network.input_shape))
    model.eval()
    edges = [network.input_edge_for(16, axis) for axis in range(3)]
    tile = normalize(
        np.pad(sample_stack("raw", (8, 28, 36)), [(0, e - s) for e, s in zip(edges, (8, 28, 36))], "reflect")
    )
    with torch.no_grad():
        model.final.bias -= model(torch.from_numpy(tile)[None, None]).median()
    return save_checkpoint(directory, model, None, 3, "mito", (5, 5, 5))


@pytest.mark.slow  # heavy (~40 s each): run in CI with -m slow; each option's exactness is in tests/nn/test_model.py
@pytest.mark.parametrize("name", OPTION_NETWORKS)
def test_network_options_and_tta_are_bit_identical_across_workers_blocks_and_resume(tmp_path, name):
    # smaller than `raw` (16 variants a pass), still odd to the blocks and passes
    raw = write_dataset(
        tmp_path / "cell.zarr/volumes/raw", sample_stack("raw", (12, 20, 28)), chunk=8, offset=(50, 100, 150)
    )
    checkpoint = option_checkpoint(tmp_path / "run", OPTION_NETWORKS[name])
    reference, other = tmp_path / "cell.zarr/volumes/reference", tmp_path / "cell.zarr/volumes/other"
    resumed, plain = tmp_path / "cell.zarr/volumes/resumed", tmp_path / "cell.zarr/volumes/plain"
    tta = ("--tta", "mirror+transpose")

    first = predict(checkpoint, raw, reference, "--workers", 1, "--block", 16, *tta)
    second = predict(checkpoint, raw, other, "--workers", 2, "--block", 8, *tta)
    stage = PredictStage(
        checkpoint=str(checkpoint), raw=str(raw), output=str(resumed), step=STEP, block=8, chunk=8, device="cpu",
        tta="mirror+transpose",
    )  # fmt: skip
    kill_midway(SlowPredictStage(**stage.model_dump()), done_blocks=3, seconds_per_block=0.5)
    third = predict(checkpoint, raw, resumed, "--block", 8, *tta)
    without = predict(checkpoint, raw, plain, "--block", 16, "--tta", "none")

    for result in (first, second, third, without):
        assert result.returncode == 0, result.stderr
    assert "skipped" in third.stdout and " 0 skipped" not in third.stdout  # it did resume
    for out in (other, resumed):
        for a, b in zip(outputs(reference), outputs(out)):
            np.testing.assert_array_equal(a, b)
    with_tta, without_tta = outputs(reference)[0], outputs(plain)[0]
    assert 0.05 < outputs(reference)[1].mean() < 0.95 and not np.array_equal(with_tta, without_tta)
    source = dataset_meta(DatasetPath.parse(f"{reference}/probabilities"))["source"]
    sees_z = OPTION_NETWORKS[name].sees_axis(0)
    assert source["test_time_augmentation"] == {"mode": "mirror+transpose", "variants": 16 if sees_z else 8}


def test_tta_averages_the_mirrored_and_transposed_predictions():
    """One pass with test-time augmentation is the mean of the network's probabilities over the mirrored and
    transposed inputs, each mirrored back."""
    network = OPTION_NETWORKS["batch norm, residual, anisotropic, 2.5D"]
    model = inference_model(UNet3D(network))
    edges = (network.input_edge_for(4, 0), network.input_edge_for(12, 1), network.input_edge_for(12, 2))
    raw = np.random.default_rng(1).uniform(-1, 1, size=edges).astype(np.float32)
    variants = tta_variants(network, "mirror+transpose", transposable=True)
    assert len(variants) == 16 and len(set(variants)) == 16
    assert len(tta_variants(OPTION_NETWORKS["slice-wise 2D"], "mirror", transposable=True)) == 4  # no z mirror
    assert len(tta_variants(network, "mirror+transpose", transposable=False)) == 8

    averaged = predict_region(model, raw, edges, torch.device("cpu"), output="probabilities", variants=variants)

    expected = np.zeros_like(averaged)
    for flips in itertools.chain.from_iterable(itertools.combinations(range(3), n) for n in range(4)):
        for transpose in (False, True):
            view = np.flip(raw, flips) if flips else raw
            view = np.ascontiguousarray(view.swapaxes(1, 2) if transpose else view)
            logits = predict_region(model, view, view.shape, torch.device("cpu"))
            logits = logits.swapaxes(1, 2) if transpose else logits
            expected += 1 / (1 + np.exp(-(np.flip(logits, flips) if flips else logits))) / 16
    np.testing.assert_allclose(averaged, expected, atol=1e-5)


@pytest.mark.slow  # heavy (~30 s): run in CI with -m slow, beside the real-data tests
def test_clean_up_equals_the_whole_volume_result_whatever_the_blocks(tmp_path, checkpoint, raw):
    small, large = tmp_path / "cell.zarr/volumes/small", tmp_path / "cell.zarr/volumes/large"
    clean = ("--min-object-voxels", 40, "--min-hole-voxels", 40)

    first = predict(checkpoint, raw, small, "--block", 8, *clean)
    second = predict(checkpoint, raw, large, "--block", 16, "--workers", 2, *clean)

    assert first.returncode == 0 and second.returncode == 0, first.stderr + second.stderr
    probabilities, segmentation = outputs(small)
    cleanup = CleanUp(min_object_voxels=40, min_hole_voxels=40)
    pad = cleanup.context_voxels()
    whole = cleanup.apply(np.pad(segment(probabilities, 0.5), pad))[pad:-pad, pad:-pad, pad:-pad]
    np.testing.assert_array_equal(segmentation, whole)
    assert not np.array_equal(whole, segment(probabilities, 0.5))  # the clean-up changed something
    np.testing.assert_array_equal(outputs(large)[1], segmentation)
    assert "objects < 40 removed, holes < 40 filled" in first.stdout
    recorded = dataset_meta(DatasetPath.parse(f"{small}/segmentation"))["source"]["threshold"]["clean_up"]
    assert recorded["min_object_voxels"] == 40 and recorded["min_hole_voxels"] == 40


def test_an_exported_model_brings_its_threshold_tta_and_clean_up(tmp_path, checkpoint, raw):
    exported = export_weights(
        checkpoint, tmp_path / "model.pt", {"name": "test"}, 0.6, "mirror", {"min_object_voxels": 40}
    )
    out = tmp_path / "cell.zarr/volumes/predictions/exported/mito"

    result = predict(exported, raw, out, "--block", 16)

    assert result.returncode == 0, result.stderr
    assert "threshold 0.6, test-time augmentation mirror, objects < 40 removed" in result.stdout
    source = dataset_meta(DatasetPath.parse(f"{out}/probabilities"))["source"]
    assert source["predict"]["tta"] == "mirror" and source["test_time_augmentation"]["variants"] == 8


def test_raw_without_the_models_preprocessing_warns_and_strict_refuses(tmp_path, raw):
    torch.manual_seed(0)
    clahe = {"kernel": 128, "clip_limit": 0.02, "nbins": 256, "intensity_range": [0, 255]}
    checkpoint = save_checkpoint(
        tmp_path / "run", UNet3D(TINY), None, 1, "mito", (5, 5, 5), preprocessing={"clahe": clahe}
    )

    warned = predict(checkpoint, raw, tmp_path / "cell.zarr/volumes/loose")
    refused = predict(checkpoint, raw, tmp_path / "cell.zarr/volumes/strict", "--strict")

    assert warned.returncode == 0, warned.stderr
    assert "data without CLAHE or rescaling, but" in warned.stderr
    assert "was trained on data after clahe (kernel 128" in warned.stderr
    assert refused.returncode == 2 and len(refused.stderr.strip().splitlines()) == 1, refused.stderr
    assert "preprocess it with those parameters first" in refused.stderr


def test_batched_passes_and_variants_are_bit_identical_across_workers_blocks_threads_and_resume(
    tmp_path, checkpoint, raw
):
    """Three passes (or variants) per forward, rows of passes half a chunk deep (written in chunk-aligned slabs
    by several writer threads): the same bits whatever the workers, blocks, threads or a resume."""
    batched = ("--batch", 3, "--tta", "mirror", "--chunk", 16)
    reference, other = tmp_path / "cell.zarr/volumes/reference", tmp_path / "cell.zarr/volumes/other"
    resumed = tmp_path / "cell.zarr/volumes/resumed"

    first = predict(checkpoint, raw, reference, "--workers", 1, "--block", 32, "--io-threads", 1, *batched)
    second = predict(checkpoint, raw, other, "--workers", 2, "--block", 16, "--io-threads", 3, *batched)
    stage = PredictStage(
        checkpoint=str(checkpoint), raw=str(raw), output=str(resumed), step=STEP, block=16, chunk=16, device="cpu",
        tta="mirror", batch=3,
    )  # fmt: skip
    kill_midway(SlowPredictStage(**stage.model_dump()), done_blocks=2, seconds_per_block=0.5)
    third = predict(checkpoint, raw, resumed, "--block", 16, *batched)

    for result in (first, second, third):
        assert result.returncode == 0, result.stderr
    assert "skipped" in third.stdout and " 0 skipped" not in third.stdout  # it did resume
    for out in (other, resumed):
        for a, b in zip(outputs(reference), outputs(out)):
            np.testing.assert_array_equal(a, b)
    assert 0.05 < outputs(reference)[1].mean() < 0.95
    source = dataset_meta(DatasetPath.parse(f"{reference}/probabilities"))["source"]
    assert source["predict"]["batch"] == 3 and source["test_time_augmentation"]["variants"] == 8
