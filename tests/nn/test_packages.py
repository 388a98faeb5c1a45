"""Another tool's bioimage.io package run blockwise: a hand-written rdf (v0.5) around a TorchScript network of
another architecture (two valid convolutions and a 'same' one whose border the halo crops), `scale_range`
preprocessing over the dataset, probabilities from inside the network or from a `sigmoid` postprocessing."""

import io
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from torch import nn

from incasem_like.core.errors import UserError
from incasem_like.nn.checkpoints import load_checkpoint, model_from_checkpoint
from incasem_like.nn.inference import predict_region
from incasem_like.nn.model import NetworkConfig, inference_model, triple
from incasem_like.nn.normalization import IntensityRange, NormalizationRule, checkpoint_rule, normalize
from incasem_like.stages.predict import PredictStage
from tests.conftest import read_dataset, run_cli, run_cli_in_process, write_dataset
from tests.predict_stages import SlowPredictStage
from tests.toy_stages import kill_midway
from tests.training_data import sample_stack

PERCENTILES = (1.0, 99.0)
HALO = 1
CONTEXT = 2 + HALO  # two valid 3x3x3 convolutions, then the halo
STEP = 8


@pytest.fixture(autouse=True)
def offline_bioimageio_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("BIOIMAGEIO_CACHE_PATH", str(tmp_path / "bioimageio_cache"))


class ThirdParty(nn.Module):
    """Not our U-Net: two valid convolutions, a zero-padded one, and (if `inside`) the sigmoid."""

    def __init__(self, inside: bool):
        super().__init__()
        self.valid = nn.Sequential(nn.Conv3d(1, 4, 3), nn.ReLU(), nn.Conv3d(4, 4, 3), nn.ReLU())
        self.same = nn.Conv3d(4, 1, 3, padding=1)
        self.inside = inside

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.same(self.valid(x))
        return torch.sigmoid(y) if self.inside else y


def scale_range(raw: np.ndarray) -> np.ndarray:
    """bioimage.io's `scale_range` with the percentiles of all of `raw` (the lower value at the rank)."""
    low, high = np.percentile(raw, PERCENTILES, method="inverted_cdf")
    return ((raw.astype(np.float32) - low) / (high - low + 1e-6)).astype(np.float32)


def network_output(network: torch.jit.ScriptModule, inside: bool, scaled: np.ndarray) -> np.ndarray:
    """The package's output for preprocessed input: probabilities, the halo included."""
    with torch.no_grad():
        output = network(torch.from_numpy(scaled)[None, None])[0, 0]
    return (output if inside else torch.sigmoid(output)).numpy()


def run_package(network: torch.jit.ScriptModule, inside: bool, raw: np.ndarray) -> np.ndarray:
    """The package run as bioimage.io describes it on all of `raw` (mirrored by the context), the halo cropped."""
    probabilities = network_output(network, inside, np.pad(scale_range(raw), CONTEXT, mode="reflect"))
    return probabilities[HALO:-HALO, HALO:-HALO, HALO:-HALO]


def space(id: str, size) -> dict:
    return {"type": "space", "id": id, "size": size, "scale": 5.0, "unit": "nanometer"}


def write_package(path: Path, inside: bool, change=None) -> Path:
    """A package as another tool writes it (`change` edits the rdf first); validated by bioimageio.spec."""
    torch.manual_seed(1)
    model = ThirdParty(inside).eval()
    test_raw = sample_stack("raw", (14, 20, 20))
    with torch.no_grad():  # the output bias at the median logit: both classes occur
        logits = model.same(model.valid(torch.from_numpy(scale_range(test_raw))[None, None]))
        model.same.bias -= logits.median()
    traced = torch.jit.trace(model, torch.zeros(1, 1, 9, 9, 9))
    weights = io.BytesIO()
    torch.jit.save(traced, weights)
    test_output = network_output(traced, inside, scale_range(test_raw))
    rdf = {
        "type": "model",
        "format_version": "0.5.4",
        "name": "third-party tiny 3D net",
        "description": "binary foreground in volume EM, not incasem-like's",
        "authors": [{"name": "another tool"}],
        "cite": [{"text": "A tool.", "doi": "10.1083/jcb.202208005"}],
        "license": "MIT",
        "documentation": "README.md",
        "inputs": [
            {
                "id": "raw",
                "axes": [{"type": "batch"}, {"type": "channel", "channel_names": ["em"]}]
                + [space(id, {"min": 7, "step": 1}) for id in "zyx"],
                "test_tensor": {"source": "in.npy"},
                "data": {"type": "float32"},
                "preprocessing": [
                    {
                        "id": "scale_range",
                        "kwargs": {"axes": ["z", "y", "x"], "min_percentile": PERCENTILES[0], "max_percentile": 99.0},
                    }
                ],
            }
        ],
        "outputs": [
            {
                "id": "foreground",
                "axes": [{"type": "batch"}, {"type": "channel", "channel_names": ["foreground"]}]
                + [
                    {**space(id, {"tensor_id": "raw", "axis_id": id, "offset": -2 * (CONTEXT - HALO)}), "halo": HALO}
                    for id in "zyx"
                ],
                "test_tensor": {"source": "out.npy"},
                "data": {"type": "float32", "range": [0.0, 1.0]},
                **({} if inside else {"postprocessing": [{"id": "sigmoid"}]}),
            }
        ],
        "weights": {"torchscript": {"source": "net.pt", "pytorch_version": torch.__version__.split("+")[0]}},
    }
    if change is not None:
        change(rdf)
    files = {"README.md": b"# a tiny net\n", "net.pt": weights.getvalue()}
    for name, array in (("in.npy", test_raw.astype(np.float32)), ("out.npy", test_output)):
        buffer = io.BytesIO()
        np.save(buffer, array[None, None])
        files[name] = buffer.getvalue()
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("rdf.yaml", yaml.safe_dump(rdf, sort_keys=False))
        for name, data in files.items():
            archive.writestr(name, data)
    return path


@pytest.fixture(scope="module", params=[True, False], ids=["probabilities inside", "sigmoid postprocessing"])
def package(request, tmp_path_factory) -> tuple[Path, bool]:
    from bioimageio.spec import InvalidDescr, load_description

    path = write_package(tmp_path_factory.mktemp("package") / "third_party.zip", request.param)
    description = load_description(path, perform_io_checks=True)
    assert not isinstance(description, InvalidDescr), description.validation_summary.format()
    return path, request.param


@pytest.fixture
def raw(tmp_path):
    volume = sample_stack("raw", (20, 28, 36))
    return write_dataset(tmp_path / "cell.zarr/volumes/raw", volume, chunk=8, offset=(50, 100, 150))


def predict(package, raw, out, *extra):
    return run_cli(
        "predict", "--checkpoint", package, "--raw", raw, "--out", out, "--device", "cpu", "--step", STEP,
        "--chunk", 8, "--quiet", *extra,
    )  # fmt: skip


def test_the_packages_network_runs_as_ours_on_passes_as_on_the_whole_volume(package):
    path, inside = package
    model, state = model_from_checkpoint(path)
    raw = sample_stack("raw", (20, 28, 36))
    assert state["voxel_size"] == [5.0, 5.0, 5.0] and state["threshold"] is None
    assert checkpoint_rule(state) == NormalizationRule(mode="percentiles", percentiles=PERCENTILES, clip=False)
    low, high = np.percentile(raw, PERCENTILES, method="inverted_cdf")
    normalized = normalize(np.pad(raw, CONTEXT, mode="reflect"), IntensityRange(low, high, clip=False))
    with zipfile.ZipFile(path) as archive:
        expected = np.round(run_package(torch.jit.load(io.BytesIO(archive.read("net.pt"))), inside, raw) * 255)

    for step in (8, 12):
        input_shape = triple(model.config.input_edge_for(step, axis) for axis in range(3))
        probabilities = predict_region(
            inference_model(model), normalized, input_shape, torch.device("cpu"), output="quantized"
        )

        difference = np.abs(probabilities.astype(int) - expected)
        assert difference.max() <= 1 and (difference == 0).mean() > 0.99
    assert 0.05 < (expected > 127.5).mean() < 0.95  # both classes: the comparison means something


@pytest.mark.slow  # two runs of the command (~20 s each on 2 busy cores)
def test_a_third_party_package_predicts_blockwise_bit_identically_and_as_on_the_whole_volume(tmp_path, package, raw):
    path, inside = package
    one, two = tmp_path / "cell.zarr/volumes/one", tmp_path / "cell.zarr/volumes/two"

    first = predict(path, raw, one, "--workers", 1, "--block", 16)
    second = predict(path, raw, two, "--workers", 2, "--block", 8)

    assert first.returncode == 0 and second.returncode == 0, first.stderr + second.stderr
    for name in ("probabilities", "segmentation"):
        np.testing.assert_array_equal(read_dataset(f"{one}/{name}"), read_dataset(f"{two}/{name}"))
    with zipfile.ZipFile(path) as archive:
        network = torch.jit.load(io.BytesIO(archive.read("net.pt")))
    expected = np.round(run_package(network, inside, read_dataset(raw)) * 255).astype(int)
    probabilities = read_dataset(f"{one}/probabilities").astype(int)
    assert np.abs(probabilities - expected).max() <= 1 and (probabilities == expected).mean() > 0.99
    assert 0.05 < read_dataset(f"{one}/segmentation").mean() < 0.95  # both classes: the comparison means something


@pytest.mark.slow  # a killed and a resumed run (~25 s)
def test_a_third_party_package_resumes_with_identical_output(tmp_path, package, raw):
    path, _ = package
    reference, out = tmp_path / "cell.zarr/volumes/reference", tmp_path / "cell.zarr/volumes/resumed"
    assert predict(path, raw, reference, "--block", 8).returncode == 0
    stage = PredictStage(checkpoint=str(path), raw=str(raw), output=str(out), step=STEP, block=8, chunk=8)
    kill_midway(SlowPredictStage(**stage.model_dump()), done_blocks=3, seconds_per_block=0.5)

    result = predict(path, raw, out, "--block", 8)

    assert result.returncode == 0 and " skipped" in result.stdout, result.stderr
    for name in ("probabilities", "segmentation"):
        np.testing.assert_array_equal(read_dataset(f"{reference}/{name}"), read_dataset(f"{out}/{name}"))


def _drop_z(rdf: dict) -> None:
    for tensor in (*rdf["inputs"], *rdf["outputs"]):
        tensor["axes"] = [axis for axis in tensor["axes"] if axis.get("id") != "z"]
    rdf["inputs"][0]["preprocessing"][0]["kwargs"]["axes"] = ["y", "x"]


def _two_channels(rdf: dict) -> None:
    rdf["inputs"][0]["axes"][1]["channel_names"] = ["em", "membranes"]


def _onnx_only(rdf: dict) -> None:
    rdf["weights"] = {"onnx": {"source": "net.pt", "opset_version": 17}}


def _not_torchscript(rdf: dict) -> None:
    rdf["weights"]["torchscript"]["source"] = "README.md"


def _tile_statistics(rdf: dict) -> None:
    rdf["inputs"][0]["preprocessing"] = [{"id": "zero_mean_unit_variance", "kwargs": {"axes": ["z", "y", "x"]}}]


def _per_slice_percentiles(rdf: dict) -> None:
    rdf["inputs"][0]["preprocessing"][0]["kwargs"]["axes"] = ["y", "x"]


def _other_voxel_size(rdf: dict) -> None:
    for tensor in (*rdf["inputs"], *rdf["outputs"]):
        for axis in tensor["axes"][2:]:
            axis["scale"] = 8.0


@pytest.mark.parametrize(
    "change, message",
    [
        (
            _drop_z,
            "inputs[0].axes have the space axes y, x, not z, y and x (a 2D model); incasem-like predicts volumes",
        ),
        (_two_channels, "inputs[0].axes.channel has 2 channels (em, membranes); incasem-like feeds one raw channel"),
        (_onnx_only, "weights are onnx; incasem-like runs another tool's package from TorchScript weights only"),
        (_not_torchscript, "weights.torchscript.source 'README.md' is no TorchScript (PytorchStreamReader failed"),
        (_tile_statistics, "inputs[0].preprocessing[0].id zero_mean_unit_variance uses statistics of each tile"),
        (_per_slice_percentiles, "inputs[0].preprocessing[0].kwargs.axes leave out z: percentiles per slice"),
        (_other_voxel_size, "voxel size (5, 5, 5) nm differs from the (8, 8, 8) nm the model"),
    ],
    ids=[
        "2D",
        "two input channels",
        "onnx only",
        "not torchscript",
        "tile statistics",
        "per-slice percentiles",
        "other voxel size",
    ],
)
def test_what_a_package_cannot_run_is_refused_in_one_line(tmp_path, raw, change, message, capsys):
    path = write_package(tmp_path / "refused.zip", inside=True, change=change)
    out = tmp_path / "cell.zarr/volumes/out"

    result = run_cli_in_process(
        capsys, "predict", "--checkpoint", path, "--raw", raw, "--out", out, "--device", "cpu", "--strict", "--quiet"
    )

    assert result.returncode == 2, result.stderr
    assert message in result.stderr and str(path) in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and not out.exists(), result.stderr


def test_a_third_party_package_is_neither_exported_nor_trained_further(tmp_path, package, capsys):
    path, _ = package

    result = run_cli_in_process(capsys, "export-model", path, tmp_path / "again.zip")

    assert result.returncode == 2 and "a bioimage.io package of another tool; export-model exports" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and not (tmp_path / "again.zip").exists(), result.stderr
    with pytest.raises(UserError, match="a bioimage.io package of another tool, which incasem-like runs but does not"):
        load_checkpoint(path, NetworkConfig())
