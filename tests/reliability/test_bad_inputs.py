"""Bad inputs: each is refused with exit code 2 and exactly one line `incasem-like: error: ...` naming the offending
file, key or value, and nothing under the test's folder is created, changed or removed.

The commands run in this process through `incasem_like.cli.main` (fast); an unwritable output folder needs a
process of its own (see `test_unwritable_output_folders_are_one_line_and_nothing_is_written`).
"""

import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
import yaml
import zarr

from incasem_like.cli.main import main
from incasem_like.nn.checkpoints import save_checkpoint
from incasem_like.nn.model import NetworkConfig, UNet3D
from incasem_like.store.datasets import DatasetPath
from tests.conftest import REPO, write_dataset, write_slices
from tests.training_data import TINY_NETWORK, write_config


def tree_state(root: Path) -> dict[str, tuple[str, int] | None]:
    """Every folder (None) and file (sha256, mtime) under `root`, by relative path."""
    state: dict = {}
    for path in sorted(root.rglob("*")):
        key = str(path.relative_to(root))
        if path.is_symlink():
            state[key] = ("link", os.readlink(path))
        elif path.is_dir():
            state[key] = None
        elif path.is_file():
            state[key] = (hashlib.sha256(path.read_bytes()).hexdigest(), path.stat().st_mtime_ns)
        else:  # a FIFO or another special file: never read
            state[key] = ("special", path.stat().st_mtime_ns)
    return state


# --- inputs ------------------------------------------------------------------------------------------------------
def slices(folder: Path) -> Path:
    """Three 8 x 8 uint8 slices, uncompressed."""
    write_slices(folder, np.arange(3 * 64, dtype=np.uint8).reshape(3, 8, 8), compression=None)
    return folder


def dataset(path: Path, shape=(8, 16, 16), dtype=np.uint8) -> DatasetPath:
    return write_dataset(path, np.random.default_rng(0).integers(0, 2, shape).astype(dtype), chunk=8)


def damage_first_chunk(path: DatasetPath) -> None:
    (path.array_path / "c" / "0" / "0" / "0").write_bytes(b"these bytes are no blosc-compressed chunk")


def cell(tmp: Path, raw_shape=(16, 24, 24), labels_shape=(16, 24, 24)) -> dict:
    """A training cell entry with random raw and 0/1 labels."""
    dataset(tmp / "cell.zarr/volumes/raw", raw_shape)
    dataset(tmp / "cell.zarr/volumes/labels/mito", labels_shape)
    return {"container": str(tmp / "cell.zarr"), "raw": "volumes/raw", "labels": "volumes/labels/mito"}


def config(tmp: Path, training: dict, **changes) -> Path:
    """A training config for the tiny network (`changes` replace top-level keys; None removes one)."""
    path = write_config(tmp / "train.yaml", tmp / "run", [training], [training])
    content = {**yaml.safe_load(path.read_text()), **changes}
    path.write_text(yaml.safe_dump({key: value for key, value in content.items() if value is not None}))
    return path


def checkpoint(tmp: Path, **network) -> Path:
    torch.manual_seed(0)
    model = UNet3D(NetworkConfig(**{**TINY_NETWORK, **network}))
    return save_checkpoint(tmp / "model", model, None, 2, "mito", (5, 5, 5))


# --- the cases: each builds its inputs and returns the command line and what its one line must say ----------------
def truncated_tiff(tmp):
    folder = slices(tmp / "slices")
    (folder / "slice_1.tif").write_bytes((folder / "slice_1.tif").read_bytes()[:-40])
    return ["convert", folder, tmp / "c.zarr/volumes/raw", "--voxel-size", 5, 5, 5], f"{folder}/slice_1.tif: truncated"


def corrupt_tiff(tmp):
    folder = slices(tmp / "slices")
    (folder / "slice_1.tif").write_bytes(b"II*\x00 but nothing of a TIFF after its first bytes")
    argv = ["convert", folder, tmp / "c.zarr/volumes/raw", "--voxel-size", 5, 5, 5]
    return argv, f"{folder}/slice_1.tif: not a readable TIFF"


def slice_of_another_shape(tmp):
    folder = slices(tmp / "slices")
    tifffile.imwrite(folder / "slice_2.tif", np.zeros((8, 9), np.uint8))
    argv = ["convert", folder, tmp / "c.zarr/volumes/raw", "--voxel-size", 5, 5, 5]
    return argv, f"{folder}/slice_2.tif: shape (8, 9) differs from {folder}/slice_0.tif (8, 8)"


def slice_of_another_dtype(tmp):
    folder = slices(tmp / "slices")
    tifffile.imwrite(folder / "slice_2.tif", np.zeros((8, 8), np.uint16))
    argv = ["convert", folder, tmp / "c.zarr/volumes/raw", "--voxel-size", 5, 5, 5]
    return argv, f"{folder}/slice_2.tif: dtype uint16 differs from {folder}/slice_0.tif uint8"


def rgb_slice(tmp):
    folder = slices(tmp / "slices")
    tifffile.imwrite(folder / "slice_1.tif", np.zeros((8, 8, 3), np.uint8), photometric="rgb")
    argv = ["convert", folder, tmp / "c.zarr/volumes/raw", "--voxel-size", 5, 5, 5]
    return argv, f"{folder}/slice_1.tif: 3 samples per pixel (RGB?)"


def empty_folder(tmp):
    (tmp / "slices").mkdir()
    argv = ["convert", tmp / "slices", tmp / "c.zarr/volumes/raw", "--voxel-size", 5, 5, 5]
    return argv, f"{tmp / 'slices'}: no .tif/.tiff files in this directory"


def other_file_among_slices(tmp):
    folder = slices(tmp / "slices")
    (folder / "notes.txt").write_text("slice 3 is missing\n")
    argv = ["convert", folder, tmp / "c.zarr/volumes/raw", "--voxel-size", 5, 5, 5]
    return argv, f"{folder}/notes.txt: not a TIFF slice, among the slices"


def zero_voxel_size(tmp):
    argv = ["convert", slices(tmp / "slices"), tmp / "c.zarr/volumes/raw", "--voxel-size", 0, 5, 5]
    return argv, "--voxel-size value 1 = 0.0: Input should be greater than or equal to 0.000001"


def negative_voxel_size(tmp):
    argv = ["convert", slices(tmp / "slices"), tmp / "c.zarr/volumes/raw", "--voxel-size", 5, -5, 5]
    return argv, "--voxel-size value 2 = -5.0: Input should be greater than or equal to 0.000001"


def existing_output(tmp):
    out = dataset(tmp / "c.zarr/volumes/raw")
    argv = ["convert", slices(tmp / "slices"), out, "--voxel-size", 5, 5, 5]
    return argv, f"{out} already exists and was not written by this exact command; pass --overwrite"


def missing_dataset(tmp):
    dataset(tmp / "c.zarr/volumes/raw")
    argv = ["clahe", tmp / "c.zarr/volumes/raw_clahe", tmp / "c.zarr/volumes/out"]
    return argv, f"{tmp / 'c.zarr/volumes/raw_clahe'}: no such dataset"


def roi_outside_the_data(tmp):
    raw = dataset(tmp / "c.zarr/volumes/raw")
    argv = ["clahe", raw, tmp / "c.zarr/volumes/out", "--roi", 4, 0, 0, 8, 16, 16]
    return argv, f"--roi offset (4, 0, 0) shape (8, 16, 16) (voxels) lies outside {raw} of shape (8, 16, 16)"


def zero_voxel_size_in_metadata(tmp):
    raw = dataset(tmp / "c.zarr/volumes/raw")
    group = zarr.open_group(raw.group_path, mode="r+")
    ome = group.attrs["ome"]
    ome["multiscales"][0]["datasets"][0]["coordinateTransformations"][0]["scale"] = [0.0, 5.0, 5.0]
    group.attrs["ome"] = ome
    argv = ["clahe", raw, tmp / "c.zarr/volumes/out"]
    return argv, f"{raw}: voxel size [0.0, 5.0, 5.0] in its OME-Zarr metadata must be 3 positive numbers"


def config_key_with_a_typo(tmp):
    path = config(tmp, cell(tmp), iterationz=10)
    return ["train", path], f"{path}: iterationz: unknown key; did you mean 'iterations'"


def config_value_of_the_wrong_type(tmp):
    path = config(tmp, cell(tmp), iterations="many")
    return ["train", path], f"{path}: iterations = 'many': Input should be a valid integer"


def config_that_is_no_yaml(tmp):
    path = tmp / "train.yaml"
    path.write_text("organelle: mito\n  run_dir: [runs\n")
    return ["train", path], f"{path}: not valid YAML at line 2"


def labels_of_another_shape_than_raw(tmp):
    training = {**cell(tmp, labels_shape=(10, 24, 24)), "roi": {"offset": [0, 0, 0], "shape": [16, 24, 24]}}
    path = config(tmp, training)
    message = "training[0].roi: offset [0, 0, 0] shape [16, 24, 24] (voxels) reaches outside labels"
    return ["train", path], message


def volume_smaller_than_the_network(tmp):
    path = config(tmp, cell(tmp, raw_shape=(6, 24, 24), labels_shape=(6, 24, 24)))
    message = "training[0].roi: shape [6, 24, 24] (voxels) is smaller than the network output [10, 10, 10]"
    return ["train", path], message


def checkpoint_of_another_architecture(tmp):
    other = checkpoint(tmp, feature_maps=6)
    path = config(tmp, cell(tmp))
    return ["finetune", path, "--from", other], f"{other}: trained with network {{'feature_maps': 6"


def checkpoint_that_is_no_checkpoint(tmp):
    raw = dataset(tmp / "c.zarr/volumes/raw")
    fake = tmp / "model.pt"
    fake.write_text("weights: see the lab wiki\n")
    argv = ["predict", "--checkpoint", fake, "--raw", raw, "--out", tmp / "c.zarr/volumes/pred", "--device", "cpu"]
    return argv, f"{fake}: not a readable checkpoint"


def labels_of_another_shape_than_the_prediction(tmp):
    prediction = dataset(tmp / "c.zarr/volumes/segmentation")
    labels = dataset(tmp / "c.zarr/volumes/labels/mito", shape=(8, 8, 8))
    argv = ["evaluate", "--prediction", prediction, "--labels", labels]
    return argv, f"{labels} (labels): covers offset (0, 0, 0) nm, shape (8, 8, 8) voxels, not all of the evaluated"


def damaged_chunk_on_export(tmp):
    segmentation = dataset(tmp / "c.zarr/volumes/segmentation")
    damage_first_chunk(segmentation)
    argv = ["export", segmentation, tmp / "tiffs"]
    return argv, f"{segmentation}: cannot read voxels [0:8] (RuntimeError: error during blosc decompression"


def damaged_chunk_on_evaluate(tmp):
    prediction = dataset(tmp / "c.zarr/volumes/segmentation")
    labels = dataset(tmp / "c.zarr/volumes/labels/mito")
    damage_first_chunk(labels)
    argv = ["evaluate", "--prediction", prediction, "--labels", labels]
    return argv, f"{labels}: cannot read voxels [0:8, 0:16, 0:16] (RuntimeError: error during blosc decompression"


def existing_export_folder(tmp):
    segmentation = dataset(tmp / "c.zarr/volumes/segmentation")
    (tmp / "tiffs").mkdir()
    tifffile.imwrite(tmp / "tiffs" / "slice_0000.tif", np.zeros((4, 4), np.uint8))
    return ["export", segmentation, tmp / "tiffs"], f"{tmp / 'tiffs'} already exists; pass --overwrite"


CASES: dict[str, Callable[[Path], tuple[list, str]]] = {
    case.__name__: case
    for case in (
        truncated_tiff,
        corrupt_tiff,
        slice_of_another_shape,
        slice_of_another_dtype,
        rgb_slice,
        empty_folder,
        other_file_among_slices,
        zero_voxel_size,
        negative_voxel_size,
        existing_output,
        missing_dataset,
        roi_outside_the_data,
        zero_voxel_size_in_metadata,
        config_key_with_a_typo,
        config_value_of_the_wrong_type,
        config_that_is_no_yaml,
        labels_of_another_shape_than_raw,
        volume_smaller_than_the_network,
        checkpoint_of_another_architecture,
        checkpoint_that_is_no_checkpoint,
        labels_of_another_shape_than_the_prediction,
        damaged_chunk_on_export,
        damaged_chunk_on_evaluate,
        existing_export_folder,
    )
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_is_one_line_and_nothing_is_written(case, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    argv, expected = CASES[case](tmp_path)
    before = tree_state(tmp_path)

    code = main([*map(str, argv), "--quiet"])

    error = capsys.readouterr().err
    assert code == 2 and error.count("\n") == 1 and error.startswith("incasem-like: error: "), error
    assert expected in error, error
    assert tree_state(tmp_path) == before


# --- an unwritable output folder: a process without the right to write there, even as root -----------------------
#: drops CAP_DAC_OVERRIDE from the process (which root has and an ordinary user has not: without it, folder
#: permissions hold for root too), then runs each command line of argv (a JSON list) and prints their exit codes
#: and error output as JSON
WITHOUT_OVERRIDE = """
import contextlib, ctypes, io, json, sys

class Header(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]

class Data(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]

libc = ctypes.CDLL(None, use_errno=True)
header, data = Header(0x20080522, 0), (Data * 2)()
assert libc.capget(ctypes.byref(header), data) == 0
data[0].effective &= ~(1 << 1)  # CAP_DAC_OVERRIDE
assert libc.capset(ctypes.byref(header), data) == 0

from incasem_like.cli.main import main

results = []
for argv in json.loads(sys.argv[1]):
    error = io.StringIO()
    with contextlib.redirect_stderr(error), contextlib.redirect_stdout(io.StringIO()):
        results.append([main(argv), error.getvalue()])
print(json.dumps(results))
"""


def test_unwritable_output_folders_are_one_line_and_nothing_is_written(tmp_path):
    raw = dataset(tmp_path / "c.zarr/volumes/raw")
    folder = slices(tmp_path / "slices")
    training = config(tmp_path, cell(tmp_path), run_dir=str(tmp_path / "locked" / "run"))
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    commands = {
        "convert": (["convert", folder, locked / "c.zarr/volumes/raw", "--voxel-size", 5, 5, 5], locked / "c.zarr"),
        "clahe": (["clahe", raw, locked / "c.zarr/volumes/clahe"], locked / "c.zarr"),
        "export": (["export", raw, locked / "tiffs"], locked / ".tiffs.incomplete"),
        "train": (["train", training], locked / "run"),
    }
    before = tree_state(tmp_path)

    output = subprocess.run(
        [
            sys.executable,
            "-c",
            WITHOUT_OVERRIDE,
            json.dumps([[*map(str, argv), "--quiet"] for argv, _ in commands.values()]),
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
    )

    assert output.returncode == 0, output.stderr
    for (name, (_, target)), (code, error) in zip(commands.items(), json.loads(output.stdout), strict=True):
        assert code == 2 and error.count("\n") == 1 and error.startswith("incasem-like: error: "), (name, error)
        assert f"(Permission denied: {target})" in error, (name, error)
    assert tree_state(tmp_path) == before
