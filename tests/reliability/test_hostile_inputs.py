"""Damaged and hostile inputs: nothing a user had is lost, no wrong result is silent, every failure is one line.

Each case builds its inputs and returns the command line and what its one line must say; the command must exit
with code 2, print exactly that line and change nothing under the test's folder (as in `test_bad_inputs.py`).
"""

import json
import os
import struct
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import tifffile
import yaml
import zarr

from incasem_like.cli.main import main
from incasem_like.store.datasets import DatasetPath, update_dataset_meta
from tests.conftest import write_dataset
from tests.reliability.test_bad_inputs import cell, config, dataset, slices, tree_state


def labels(path: Path) -> DatasetPath:
    """0/1 labels with a ball of foreground."""
    data = np.zeros((8, 16, 16), np.uint8)
    data[2:6, 4:12, 4:12] = 1
    written = write_dataset(path, data, chunk=8)
    update_dataset_meta(written, kind="labels")
    return written


# --- data loss: refused before anything is touched -------------------------------------------------------------
def output_group_holding_the_input(tmp):
    raw = dataset(tmp / "c.zarr/volumes/raw")
    argv = ["clahe", raw, tmp / "c.zarr/volumes", "--overwrite"]
    return argv, f"{tmp / 'c.zarr/volumes'}: the output contains the input {raw}; choose an output apart from it"


def labels_into_the_group_of_their_input(tmp):
    mito = labels(tmp / "c.zarr/volumes/labels/mito")
    argv = ["labels", "dilate", mito, tmp / "c.zarr/volumes/labels", "--organelle", "mito", "--overwrite"]
    return argv, f"{tmp / 'c.zarr/volumes/labels'}: the output contains the input {mito}"


def convert_over_a_group_of_datasets(tmp):
    dataset(tmp / "c.zarr/volumes/raw")
    argv = ["convert", slices(tmp / "slices"), tmp / "c.zarr/volumes", "--voxel-size", 5, 5, 5, "--overwrite"]
    return argv, f"{tmp / 'c.zarr/volumes'} holds datasets; --overwrite replaces one dataset, never a group of them"


def output_through_a_link(tmp):
    other = dataset(tmp / "other.zarr/volumes/raw")
    (tmp / "x.zarr/volumes").mkdir(parents=True)
    (tmp / "x.zarr/volumes/raw").symlink_to(other.group_path)
    argv = ["convert", slices(tmp / "slices"), tmp / "x.zarr/volumes/raw", "--voxel-size", 5, 5, 5, "--overwrite"]
    return argv, f"{tmp / 'x.zarr/volumes/raw'} is a link (to {other.group_path}); outputs are never written through"


def dataset_of_another_tool(tmp):
    group = zarr.open_group(tmp / "c.zarr/volumes/theirs", mode="w")
    group.create_array("s0", shape=(4, 4, 4), dtype=np.uint8)
    argv = ["convert", slices(tmp / "slices"), tmp / "c.zarr/volumes/theirs", "--voxel-size", 5, 5, 5, "--overwrite"]
    return argv, f"{tmp / 'c.zarr/volumes/theirs'} exists and is not a dataset incasem-like wrote"


def existing_view_state_file(tmp):
    dataset(tmp / "c.zarr/volumes/raw")
    (tmp / "state.json").write_text('{"mine": true}')
    argv = ["view", tmp / "c.zarr", "--base-url", "https://data.example.org/c.zarr", "--state-file", tmp / "state.json"]
    return argv, f"{tmp / 'state.json'} already exists; pass --overwrite to replace it"


# --- silent wrong results: refused loudly ----------------------------------------------------------------------
def convert_slices(tmp):
    return ["convert", tmp / "slices", tmp / "c.zarr/volumes/raw", "--voxel-size", 5, 5, 5]


def dangling_link_among_slices(tmp):
    (slices(tmp / "slices") / "slice_3.tif").symlink_to(tmp / "gone.tif")
    return convert_slices(tmp), f"{tmp / 'slices/slice_3.tif'}: a dangling link, not a slice file, among the slices"


def folder_among_slices(tmp):
    (slices(tmp / "slices") / "slice_3.tif").mkdir()
    return convert_slices(tmp), f"{tmp / 'slices/slice_3.tif'}: a folder, not a slice file, among the slices"


def fifo_among_slices(tmp):
    os.mkfifo(slices(tmp / "slices") / "slice_3.tif")
    return convert_slices(tmp), f"{tmp / 'slices/slice_3.tif'}: a special file (FIFO, socket or device)"


def gap_in_the_slice_numbers(tmp):
    (slices(tmp / "slices") / "slice_1.tif").unlink()
    return convert_slices(tmp), f"{tmp / 'slices'}: slice number 1 is missing between 0 and 2; every z would shift"


def slice_number_twice(tmp):
    folder = slices(tmp / "slices")
    (folder / "slice_01.tif").write_bytes((folder / "slice_1.tif").read_bytes())
    return convert_slices(tmp), "slice number 1 twice (also slice_01.tif); keep one of them in the folder"


def tiff_declaring_more_pixels_than_it_holds(tmp):
    folder = slices(tmp / "slices")
    data = bytearray((folder / "slice_2.tif").read_bytes())
    page = tifffile.TiffFile(folder / "slice_2.tif").pages[0]
    for tag in ("ImageWidth", "ImageLength"):  # 40000 x 40000 in a file of a few hundred bytes
        struct.pack_into("<I", data, page.tags[tag].valueoffset, 40000)
    (folder / "slice_2.tif").write_bytes(bytes(data))
    message = f"{folder / 'slice_2.tif'}: its header declares 40000 x 40000 pixels (1600000000 bytes) but the file"
    return convert_slices(tmp), message


def chunk_that_is_a_folder(tmp):
    raw = dataset(tmp / "c.zarr/volumes/raw")
    chunk = raw.array_path / "c/0/0/0"
    chunk.unlink()
    chunk.mkdir()
    return ["export", raw, tmp / "tiffs"], f"{chunk} is a folder where a chunk file belongs"


def probabilities_as_a_segmentation(tmp):
    probabilities = dataset(tmp / "c.zarr/volumes/pred/probabilities")
    update_dataset_meta(probabilities, kind="probabilities")
    argv = ["objects", probabilities, tmp / "objects.csv"]
    return argv, f"{probabilities} holds probabilities, not a segmentation; threshold them first"


def raw_as_a_segmentation(tmp):
    raw = dataset(tmp / "c.zarr/volumes/raw")
    update_dataset_meta(raw, kind="image")
    return ["objects", raw, tmp / "objects.csv"], f"{raw} holds an image, not a segmentation; segment it first"


def infinite_learning_rate(tmp):
    path = config(tmp, cell(tmp), optimizer={"learning_rate": float("inf")})
    return ["train", path], f"{path}: optimizer.learning_rate = inf: Input should be a finite number"


def validation_without_foreground(tmp):
    training = cell(tmp)
    write_dataset(tmp / "cell.zarr/volumes/labels/empty", np.zeros((16, 24, 24), np.uint8), chunk=8)
    path = write_config_with_validation(tmp, training, {**training, "labels": "volumes/labels/empty"})
    message = "its labels hold no foreground where voxels count, so its F1 would read 1.000 for predicting nothing"
    return ["train", path], message


def write_config_with_validation(tmp, training: dict, validation: dict) -> Path:
    path = config(tmp, training)
    content = yaml.safe_load(path.read_text())
    path.write_text(yaml.safe_dump({**content, "validation": [validation]}))
    return path


# --- tracebacks that became one line ------------------------------------------------------------------------------
def array_metadata_deleted(tmp):
    raw = dataset(tmp / "c.zarr/volumes/raw")
    (raw.array_path / "zarr.json").unlink()
    return ["clahe", raw, tmp / "c.zarr/volumes/out"], f"{raw}: its zarr metadata is missing or damaged"


def group_metadata_not_json(tmp):
    raw = dataset(tmp / "c.zarr/volumes/raw")
    (raw.group_path / "zarr.json").write_text("{not json")
    return ["clahe", raw, tmp / "c.zarr/volumes/out"], f"{raw}: its zarr metadata is missing or damaged"


def container_metadata_not_json(tmp):
    raw = dataset(tmp / "c.zarr/volumes/raw")
    (tmp / "c.zarr/zarr.json").write_text("{not json")
    argv = ["clahe", raw, tmp / "c.zarr/volumes/out"]
    return argv, f"{tmp / 'c.zarr/volumes/out'}: cannot create it in {tmp / 'c.zarr'} (JSONDecodeError"


def dtype_edited_to_a_multibyte_type(tmp):
    raw = dataset(tmp / "c.zarr/volumes/raw")
    metadata = json.loads((raw.array_path / "zarr.json").read_text())
    metadata["data_type"] = "uint16"
    (raw.array_path / "zarr.json").write_text(json.dumps(metadata))
    return ["clahe", raw, tmp / "c.zarr/volumes/out"], f"{raw}: its zarr metadata is missing or damaged"


def dtype_edited_to_another_byte_type(tmp):
    raw = dataset(tmp / "c.zarr/volumes/raw")
    metadata = json.loads((raw.array_path / "zarr.json").read_text())
    metadata["data_type"] = "int8"
    (raw.array_path / "zarr.json").write_text(json.dumps(metadata))
    argv = ["clahe", raw, tmp / "c.zarr/volumes/out"]
    return argv, f"{raw}: its zarr metadata was changed since it was written: dtype int8 (written as uint8)"


def voxel_size_near_2_to_the_62(tmp):
    argv = ["convert", slices(tmp / "slices"), tmp / "c.zarr/volumes/raw", "--voxel-size", 2**62, 5, 5]
    return argv, "--voxel-size value 1 = 4.611686018427388e+18: Input should be less than or equal to 100000"


def offset_near_2_to_the_62(tmp):
    argv = convert_slices(tmp)[:3] + ["--voxel-size", 5, 5, 5, "--offset", 2**62, 0, 0]
    slices(tmp / "slices")
    return argv, "--offset value 1 = 4.611686018427388e+18: Input should be less than or equal to 1000000000"


def huge_network(tmp):
    path = config(tmp, cell(tmp), network={"feature_maps": 10_000_000})
    return ["train", path], f"{path}: network.feature_maps = 10000000: Input should be less than or equal to 4096"


def seed_of_2_to_the_80(tmp):
    path = config(tmp, cell(tmp), seed=2**80)
    return ["train", path], f"{path}: seed = {2**80}: Input should be less than or equal to 4294967295"


def huge_elastic_jitter(tmp):
    path = config(tmp, cell(tmp), augmentation={"elastic": {"jitter_sigma": 1e12}})
    return ["train", path], f"{path}: augmentation.elastic.jitter_sigma = 1000000000000.0: Input should be less than"


def data_workers_without_bound(tmp):
    path = config(tmp, cell(tmp), data_workers=100_000)
    return ["train", path], f"{path}: data_workers = 100000: Input should be less than or equal to 256"


def yaml_alias_bomb(tmp):
    lines = ['a: &a ["x","x","x","x","x","x","x","x","x"]']
    for level in "bcdefgh":
        previous = chr(ord(level) - 1)
        lines.append(f"{level}: &{level} [" + ",".join([f"*{previous}"] * 9) + "]")
    path = tmp / "train.yaml"
    path.write_text("\n".join(lines) + "\norganelle: *h\n")
    return ["train", path], f"{path}: expands to more than 100000 values (YAML aliases used over and over?)"


CASES: dict[str, Callable[[Path], tuple[list, str]]] = {
    case.__name__: case
    for case in (
        output_group_holding_the_input,
        labels_into_the_group_of_their_input,
        convert_over_a_group_of_datasets,
        output_through_a_link,
        dataset_of_another_tool,
        existing_view_state_file,
        dangling_link_among_slices,
        folder_among_slices,
        fifo_among_slices,
        gap_in_the_slice_numbers,
        slice_number_twice,
        tiff_declaring_more_pixels_than_it_holds,
        chunk_that_is_a_folder,
        probabilities_as_a_segmentation,
        raw_as_a_segmentation,
        infinite_learning_rate,
        validation_without_foreground,
        array_metadata_deleted,
        group_metadata_not_json,
        container_metadata_not_json,
        dtype_edited_to_a_multibyte_type,
        dtype_edited_to_another_byte_type,
        voxel_size_near_2_to_the_62,
        offset_near_2_to_the_62,
        huge_network,
        seed_of_2_to_the_80,
        huge_elastic_jitter,
        data_workers_without_bound,
        yaml_alias_bomb,
    )
}


@pytest.mark.reliability
@pytest.mark.parametrize("case", sorted(CASES))
def test_hostile_input_is_one_line_and_nothing_is_lost(case, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    argv, expected = CASES[case](tmp_path)
    before = tree_state(tmp_path)

    code = main([*map(str, argv), "--quiet"] if argv[0] != "view" else list(map(str, argv)))

    error = capsys.readouterr().err
    assert code == 2 and error.count("\n") == 1 and error.startswith("incasem-like: error: "), error
    assert expected in error, error
    assert len(error) < 1000, error
    assert tree_state(tmp_path) == before


# --- the viewer's server answers hostile requests, never drops the connection --------------------------------------
@pytest.mark.reliability
@pytest.mark.parametrize(
    "target, headers, status",
    [
        ("/loop/zarr.json", {}, 404),  # a link loop inside the container
        ("/volumes/" + "x" * 300 + "/zarr.json", {}, 404),  # a name longer than the file system allows
        ("/volumes/raw/s0/c/0/0/0", {"Range": "bytes=" + "9" * 5000 + "-"}, 416),  # Python parses at most 4300
        ("/volumes/raw/s0/c/0/0/0", {"Range": "bytes=0-" + "9" * 5000}, 416),
    ],
)
def test_the_viewer_answers_hostile_requests(tmp_path, capfd, target, headers, status):
    import threading

    from incasem_like.review.view import ContainerServer
    from tests.review.test_view import request

    container = tmp_path / "cell.zarr"
    dataset(container / "volumes/raw")
    (container / "loop").symlink_to(container / "loop2")
    (container / "loop2").symlink_to(container / "loop")
    server = ContainerServer(container)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        assert request(server, "GET", target, headers)[0] == status
        assert request(server, "GET", "/volumes/raw/zarr.json")[0] == 200  # and it goes on serving
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
    assert "Traceback" not in capfd.readouterr().err
