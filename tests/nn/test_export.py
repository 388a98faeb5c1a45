"""Our models out (TorchScript, ONNX, bioimage.io packages checked by bioimageio.core) and packages back in."""

import zipfile

import numpy as np
import onnxruntime
import pytest
import torch
import yaml

from incasem_like.core.errors import UserError
from incasem_like.nn.checkpoints import model_from_checkpoint, save_checkpoint
from incasem_like.nn.export import export_onnx, export_package, export_shape, export_torchscript
from incasem_like.nn.model import NetworkConfig, UNet3D


@pytest.fixture(autouse=True)
def offline_bioimageio_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("BIOIMAGEIO_CACHE_PATH", str(tmp_path / "bioimageio_cache"))


@pytest.fixture
def checkpoint(tmp_path):
    torch.manual_seed(0)
    network = NetworkConfig(feature_maps=2, downsamplings=1, normalization="batch", input_shape=(20, 20, 20))
    model = UNet3D(network)
    return save_checkpoint(tmp_path / "run", model.eval(), None, 5, "mito", (5.0, 4.0, 4.0), threshold=0.4)


@pytest.mark.parametrize("kind", ["torchscript", "onnx"])
def test_exported_networks_give_our_output(tmp_path, checkpoint, kind):
    model, _ = model_from_checkpoint(checkpoint)
    shape = export_shape(model.config)
    out = (export_torchscript if kind == "torchscript" else export_onnx)(model, shape, tmp_path / f"model.{kind}")
    x = torch.rand(2, 1, *shape) * 2 - 1
    with torch.no_grad():
        ours = model(x).numpy()
    if kind == "torchscript":
        theirs = torch.jit.load(str(out))(x).detach().numpy()
    else:
        theirs = onnxruntime.InferenceSession(str(out)).run(None, {"raw": x.numpy()})[0]
    np.testing.assert_allclose(theirs, ours, atol=1e-5)


def test_a_package_passes_bioimageio_and_predicts_as_its_checkpoint(tmp_path, checkpoint):
    test_model = pytest.importorskip("bioimageio.core", reason="installed by .ci/run (see pyproject.toml)").test_model
    raw = np.random.default_rng(1).integers(0, 256, (30, 48, 48), dtype=np.uint8)
    package = export_package(checkpoint, tmp_path / "mito.zip", raw, (5.0, 4.0, 4.0), "tiny mito unet", "CC-BY-4.0")
    summary = test_model(package)
    assert summary.status == "passed", [(d.name, [e.msg for e in d.errors]) for d in summary.details]
    ours, state = model_from_checkpoint(checkpoint)
    theirs, recorded = model_from_checkpoint(package)
    assert recorded["threshold"] == 0.4 and recorded["voxel_size"] == state["voxel_size"]
    x = torch.rand(1, 1, 20, 20, 20)
    with torch.no_grad():
        assert torch.equal(theirs(x), ours(x))


def test_a_package_that_does_not_validate_is_named(tmp_path, checkpoint):
    raw = np.zeros((30, 48, 48), np.uint8)
    package = export_package(checkpoint, tmp_path / "mito.zip", raw, (5.0, 4.0, 4.0), "tiny mito unet", "CC-BY-4.0")
    broken = tmp_path / "broken.zip"
    with zipfile.ZipFile(package) as source, zipfile.ZipFile(broken, "w") as target:
        for name in source.namelist():
            data = source.read(name)
            if name == "rdf.yaml":
                rdf = yaml.safe_load(data)
                rdf["inputs"][0]["axes"][2]["scale"] = -5.0
                data = yaml.safe_dump(rdf).encode()
            target.writestr(name, data)
    with pytest.raises(UserError, match=r"broken.zip: its rdf.yaml does not validate .*inputs\.0\.axes\.2"):
        model_from_checkpoint(broken)
