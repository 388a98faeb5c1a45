"""Tomograms and real voxel sizes end to end, through the installed CLI: MRC files in (every file of the shared
samples, quirks included) and out, non-integer and anisotropic voxel sizes kept exactly from convert to predict,
export, objects and the neuroglancer state, float data rescaled by a recorded rule, and the real cryo-SXT and
cryo-ET samples through convert -> rescale -> CLAHE -> view."""

import json

import mrcfile
import numpy as np
import pytest
import tifffile
import torch
import zarr

from incasem_like.core.geometry import to_world
from incasem_like.nn.checkpoints import checkpoints, save_checkpoint
from incasem_like.nn.model import NetworkConfig, UNet3D
from incasem_like.store.datasets import DatasetPath, dataset_meta, open_dataset
from incasem_like.store.mrc import is_mrc_path
from incasem_like.training.config import load_config
from incasem_like.training.train import train
from tests.conftest import SHARED_DATA, read_dataset, run_cli, write_dataset, write_slices
from tests.store.test_mrc import reference
from tests.training_data import sample_stack, write_config

MRC_FILES = sorted(path for path in (SHARED_DATA / "mrc").glob("*") if is_mrc_path(path))
needs_shared = pytest.mark.skipif(not (SHARED_DATA / "mrc").is_dir(), reason=f"no shared data at {SHARED_DATA}")


@pytest.mark.slow  # the shared real data: run in CI with -m slow
@needs_shared
@pytest.mark.parametrize("path", MRC_FILES, ids=lambda path: path.name)
def test_every_shared_mrc_file_converts_with_mrcfiles_values_and_the_header_voxel_size(tmp_path, path):
    out = tmp_path / "t.zarr/volumes/raw"
    result = run_cli("convert", path, out, "--chunk", 16, "--quiet")
    assert result.returncode == 0, result.stderr
    expected, angstrom = reference(path)  # as mrcfile reads it
    expected = expected.reshape((-1, *expected.shape[-2:]))  # a 2D image is one slice
    x, y, z = (size / 10 for size in angstrom)
    volume = open_dataset(out)
    np.testing.assert_array_equal(volume[volume.roi], expected.astype(expected.dtype.newbyteorder("=")))
    if z == 0 or not np.isfinite(z):  # a 2D image: its z is the x voxel size, with a warning
        z = x
        assert "z voxel size is inf" in result.stderr
    assert volume.voxel_size == to_world((z, y, x))  # the header's floats (Å / 10), exactly
    if path.name.startswith(("mrc", "rec")):
        assert "lacks the 'MAP ' id" in result.stderr  # a quirk tolerated, named
    recorded = dataset_meta(DatasetPath.parse(out))["source"]["header_voxel_size_nm"]
    assert recorded == pytest.approx([z, y, x], rel=1e-12)


@pytest.mark.slow  # the shared real data: run in CI with -m slow
@needs_shared
def test_a_given_voxel_size_overrides_the_header_with_a_warning(tmp_path):
    out = tmp_path / "t.zarr/volumes/raw"
    result = run_cli("convert", SHARED_DATA / "mrc/EMD-3197.map", out, "--voxel-size", 1.2, 1.2, 1.2, "--quiet")
    assert result.returncode == 0, result.stderr
    assert "its header says voxel size (1.14, 1.14, 1.14) nm, but (1.2, 1.2, 1.2) nm was given" in result.stderr
    assert open_dataset(out).voxel_size_nm == (1.2, 1.2, 1.2)


@pytest.mark.parametrize(
    "damage, message",
    [
        ("truncate", "the file is truncated: copy it again"),
        ("mode", "MRC mode 3 (complex int16) is not supported"),
        ("voxel", "pass --voxel-size Z Y X (in nm)"),
    ],
)
def test_a_damaged_mrc_file_is_one_line_and_writes_nothing(tmp_path, damage, message):
    path = tmp_path / "tomo.mrc"
    with mrcfile.new(path) as mrc:
        mrc.set_data(np.arange(4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6))
        mrc.voxel_size = 11.4
    data = bytearray(path.read_bytes())
    if damage == "truncate":
        data = data[:-40]
    elif damage == "mode":
        data[12:16] = np.int32(3).tobytes()
    else:
        data[40:44] = np.float32(-68.4).tobytes()  # cella x: a negative voxel size
    path.write_bytes(bytes(data))
    result = run_cli("convert", path, tmp_path / "t.zarr/volumes/raw", "--quiet")
    assert result.returncode == 2 and message in result.stderr, result.stderr
    assert str(path) in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "t.zarr").exists()


@pytest.mark.parametrize(
    "options, message",
    [
        (("--voxel-size", 1 / 3, 1, 1), "has more precision than 1e-6 nm"),
        (("--voxel-size", 0, 4, 4), "--voxel-size"),
        (("--voxel-size", -5, 4, 4), "--voxel-size"),
        ((), "--voxel-size is missing"),
    ],
)
def test_bad_voxel_sizes_are_refused_naming_the_option(tmp_path, volume, options, message):
    write_slices(tmp_path / "slices", volume)
    result = run_cli("convert", tmp_path / "slices", tmp_path / "t.zarr/volumes/raw", *options, "--quiet")
    assert result.returncode == 2 and message in result.stderr, result.stderr
    assert not (tmp_path / "t.zarr").exists()


def test_nan_in_float_data_is_refused_before_anything_is_written(tmp_path):
    data = np.random.default_rng(0).normal(size=(6, 9, 10)).astype(np.float32)
    data[4, 2, 3] = np.nan
    tifffile.imwrite(tmp_path / "tomo.tif", data)
    result = run_cli("convert", tmp_path / "tomo.tif", tmp_path / "t.zarr/volumes/raw", "--voxel-size", 9.8, 9.8, 9.8)
    assert result.returncode == 2 and "nan at voxel (z y x) (4, 2, 3)" in result.stderr, result.stderr
    assert not (tmp_path / "t.zarr").exists()


def test_rescale_maps_recorded_percentiles_equal_in_any_block_and_predict_knows_the_rule(tmp_path):
    rng = np.random.default_rng(1)
    data = (rng.normal(size=(12, 40, 44)) * 3 - 1).astype(np.float32)
    data[3, 5, 7] = 1000  # an outlier the percentiles ignore
    tifffile.imwrite(tmp_path / "tomo.tif", data)
    raw_float, raw = tmp_path / "t.zarr/volumes/raw_float", tmp_path / "t.zarr/volumes/raw"
    assert (
        run_cli("convert", tmp_path / "tomo.tif", raw_float, "--voxel-size", 9.8, 9.8, 9.8, "--chunk", 8).returncode
        == 0
    )
    outputs = {}
    for block, workers in ((8, 2), (16, 1)):
        out = tmp_path / f"t.zarr/volumes/raw_{block}"
        result = run_cli("rescale", raw_float, out, "--percentiles", 1, 99, "--block", block, "--chunk", 8,
                         "--workers", workers, "--quiet")  # fmt: skip
        assert result.returncode == 0, result.stderr
        outputs[block] = read_dataset(out)
    np.testing.assert_array_equal(outputs[8], outputs[16])
    recorded = dataset_meta(DatasetPath.parse(tmp_path / "t.zarr/volumes/raw_8"))["source"]["rescale"]
    low, high = np.percentile(data, [1, 99])
    span = (data.max() - data.min()) / 2**16  # the histogram's bin width
    assert abs(recorded["low"] - low) <= span and abs(recorded["high"] - high) <= span
    expected = np.clip(
        np.rint((data.astype(np.float64) - recorded["low"]) * 255 / (recorded["high"] - recorded["low"])), 0, 255
    )
    np.testing.assert_array_equal(outputs[8], expected.astype(np.uint8))
    assert 0.005 < (outputs[8] == 255).mean() < 0.02  # the top percent saturates

    again = run_cli("rescale", raw_float, raw, "--range", recorded["low"], recorded["high"], "--chunk", 8, "--quiet")
    assert again.returncode == 0, again.stderr
    np.testing.assert_array_equal(read_dataset(raw), outputs[8])  # the recorded values, given: the same result

    model = UNet3D(NetworkConfig(feature_maps=2, downsamplings=1, input_shape=(20, 20, 20)))
    checkpoint = save_checkpoint(tmp_path / "run", model, None, 1, "mito", (9.8, 9.8, 9.8), preprocessing={})
    predicted = run_cli("predict", "--checkpoint", checkpoint, "--raw", tmp_path / "t.zarr/volumes/raw_8",
                        "--out", tmp_path / "t.zarr/volumes/pred", "--quiet")  # fmt: skip
    assert predicted.returncode == 0, predicted.stderr
    assert "data after rescale (dtype uint8, percentiles [1.0, 99.0], value_range None), but" in predicted.stderr
    refused = run_cli("predict", "--checkpoint", checkpoint, "--raw", raw_float, "--out", tmp_path / "t.zarr/p2")
    assert refused.returncode == 2, refused.stderr
    assert "dtype float32 does not fit" in refused.stderr and "normalization by bit depth" in refused.stderr
    assert "map it to uint8/uint16 with incasem-like rescale" in refused.stderr
    assert not (tmp_path / "t.zarr/p2").exists()


@pytest.mark.slow  # heavy (~45 s: a training run and two predictions): run in CI with -m slow
def test_a_model_trained_on_float_raw_normalizes_the_next_tomogram_by_the_same_rule(tmp_path):
    """Float raw (negative values) trains and predicts directly: the checkpoint records the rule (each volume's
    percentiles), the training summary the range it gave, each prediction the range on its raw; a second tomogram
    at another scale and offset is predicted as the first."""
    labels = sample_stack("mito", (40, 96, 96)) > 0
    tomogram = sample_stack("raw", (40, 96, 96)).astype(np.float32) * 0.02 - 1.7
    container = tmp_path / "tomo.zarr"
    write_dataset(container / "volumes/raw", tomogram, voxel_size=(9.8, 9.8, 9.8))
    write_dataset(container / "volumes/second", tomogram * 3 + 40, voxel_size=(9.8, 9.8, 9.8))
    write_dataset(container / "volumes/mito", labels.astype(np.uint8), voxel_size=(9.8, 9.8, 9.8))
    cell = {"container": str(container), "raw": "volumes/raw", "labels": "volumes/mito"}
    config = write_config(
        tmp_path / "c.yaml",
        tmp_path / "run",
        [{**cell, "roi": {"offset": [0, 0, 0], "shape": [28, 96, 96]}}],
        [{**cell, "roi": {"offset": [28, 0, 0], "shape": [12, 96, 96]}}],
        iterations=2,
    )
    summary = train(load_config(config), progress=False)
    state = torch.load(checkpoints(tmp_path / "run")[2], weights_only=True)
    assert state["raw_normalization"] == {"mode": "percentiles", "percentiles": [0.5, 99.5], "value_range": None}
    low, high = summary["raw_normalization"]["ranges"]["training[0]"]
    width = float(tomogram.max() - tomogram.min()) / 2**16
    assert low == pytest.approx(np.percentile(tomogram, 0.5), abs=width)
    assert high == pytest.approx(np.percentile(tomogram, 99.5), abs=width)

    predicted = {}
    for name in ("raw", "second"):
        out = container / f"volumes/predictions/{name}"
        checkpoint = checkpoints(tmp_path / "run")[2]
        result = run_cli("predict", "--checkpoint", checkpoint, "--raw", container / f"volumes/{name}", "--out", out,
                         "--block", 32, "--chunk", 16, "--quiet")  # fmt: skip
        assert result.returncode == 0, result.stderr
        predicted[name] = read_dataset(out / "probabilities").astype(int)
        recorded = dataset_meta(DatasetPath.parse(out / "probabilities"))["source"]["raw_normalization"]
        assert recorded["mode"] == "percentiles" and recorded["clip"]
        scale, shift = (1, 0) if name == "raw" else (3, 40)
        assert (recorded["low"], recorded["high"]) == pytest.approx((low * scale + shift, high * scale + shift), 1e-5)
    assert np.abs(predicted["raw"] - predicted["second"]).max() <= 1
    assert (predicted["raw"] == predicted["second"]).mean() > 0.99


def test_non_integer_voxels_survive_convert_predict_objects_export_to_mrc_and_the_viewer(tmp_path):
    voxel_size = (3.2, 4.6, 4.6)
    write_slices(tmp_path / "slices", sample_stack("raw", (12, 40, 44)))
    raw = tmp_path / "c.zarr/volumes/raw"
    converted = run_cli("convert", tmp_path / "slices", raw, "--voxel-size", *voxel_size, "--offset", 6.4, 0, 9.2,
                        "--chunk", 8, "--quiet")  # fmt: skip
    assert converted.returncode == 0, converted.stderr
    assert "voxel size (3.2, 4.6, 4.6) nm, offset (6.4, 0, 9.2) nm" in converted.stdout
    torch.manual_seed(0)
    model = UNet3D(NetworkConfig(feature_maps=2, downsamplings=1, input_shape=(20, 20, 20)))
    with torch.no_grad():
        model.final.bias.fill_(0.0)
    checkpoint = save_checkpoint(tmp_path / "run", model, None, 1, "mito", voxel_size)
    assert torch.load(checkpoint, weights_only=True)["voxel_size"] == [3.2, 4.6, 4.6]
    prediction = tmp_path / "c.zarr/volumes/predictions/run/mito"
    predicted = run_cli("predict", "--checkpoint", checkpoint, "--raw", raw, "--out", prediction, "--block", 16,
                        "--chunk", 8, "--threshold", 0.5, "--strict", "--quiet")  # fmt: skip
    assert predicted.returncode == 0, predicted.stderr  # --strict: the voxel sizes agree exactly
    segmentation = open_dataset(prediction / "segmentation")
    assert segmentation.voxel_size_nm == voxel_size and segmentation.offset_nm == (6.4, 0, 9.2)

    exported = tmp_path / "probabilities.mrc"
    result = run_cli("export", prediction / "probabilities", exported, "--format", "mrc", "--quiet")
    assert result.returncode == 0, result.stderr
    with mrcfile.open(exported) as mrc:
        assert mrc.voxel_size.item() == pytest.approx((46.0, 46.0, 32.0), rel=1e-6)  # Å, x y z
        np.testing.assert_array_equal(mrc.data, read_dataset(prediction / "probabilities"))
    back = run_cli("convert", exported, tmp_path / "again.zarr/volumes/p", "--quiet")
    assert back.returncode == 0, back.stderr
    assert open_dataset(tmp_path / "again.zarr/volumes/p").voxel_size_nm == voxel_size

    objects = run_cli("objects", prediction / "segmentation", tmp_path / "objects.csv", "--quiet")
    assert objects.returncode == 0, objects.stderr
    rows = (tmp_path / "objects.csv").read_text().splitlines()
    header, first = rows[0].split(","), dict(zip(rows[0].split(","), rows[1].split(",")))
    assert "volume_nm3" in header
    assert float(first["volume_nm3"]) == pytest.approx(int(first["voxel_count"]) * 3.2 * 4.6 * 4.6, rel=1e-9)

    state_file = tmp_path / "state.json"
    viewed = run_cli("view", tmp_path / "c.zarr", "--base-url", "http://example.org/c.zarr", "--state-file", state_file)
    assert viewed.returncode == 0, viewed.stderr
    state = json.loads(state_file.read_text())
    assert state["dimensions"] == {"x": [4.6, "nm"], "y": [4.6, "nm"], "z": [3.2, "nm"]}


@pytest.mark.slow  # the shared real data: run in CI with -m slow
@pytest.mark.skipif(not (SHARED_DATA / "sxt_contour").is_dir(), reason=f"no shared data at {SHARED_DATA}")
@pytest.mark.parametrize(
    "sample, voxel_size",
    [("sxt_contour/easy_example.tif", (30, 30, 30)), ("cryoet_hiv_vlp/tomo.tif", (1.35, 1.35, 1.35))],
)
def test_real_tomography_samples_go_through_convert_rescale_clahe_and_view(tmp_path, sample, voxel_size):
    container = tmp_path / "tomo.zarr"
    steps = [
        ("convert", SHARED_DATA / sample, container / "volumes/raw_input", "--voxel-size", *voxel_size, "--chunk", 32),
        ("rescale", container / "volumes/raw_input", container / "volumes/raw", "--block", 64, "--chunk", 32),
        (
            "clahe",
            container / "volumes/raw",
            container / "volumes/raw_clahe",
            "--kernel",
            32,
            "--block",
            64,
            "--chunk",
            32,
        ),  # fmt: skip
        ("view", container, "--base-url", "http://example.org/tomo.zarr", "--state-file", tmp_path / "state.json"),
    ]
    for step in steps:
        result = run_cli(*step, "--quiet") if step[0] != "view" else run_cli(*step)
        assert result.returncode == 0, f"{step[0]}: {result.stderr}"
    source = tifffile.imread(SHARED_DATA / sample)
    rescaled, clahe = read_dataset(container / "volumes/raw"), read_dataset(container / "volumes/raw_clahe")
    assert rescaled.shape == clahe.shape == source.shape and clahe.dtype == np.uint8
    assert rescaled.min() == 0 and rescaled.max() == 255 and 60 < np.median(rescaled) < 200
    state = json.loads((tmp_path / "state.json").read_text())
    assert state["dimensions"]["x"] == [voxel_size[2], "nm"]
    names = {layer["name"] for layer in state["layers"]}
    assert {"raw_input", "raw", "raw_clahe"} <= names
    meta = zarr.open_group(container / "volumes/raw").attrs["incasem_like"]["source"]["rescale"]
    assert meta["percentiles"] == [0.5, 99.5] and meta["input_dtype"] == source.dtype.name
