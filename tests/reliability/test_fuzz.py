"""Fuzzing the parsers users feed directly: a training config, a pipeline file, TIFF headers and a dataset's zarr
metadata, mutated by hypothesis (derandomized: the same examples on every run, a few hundred each). Whatever the
input, the parser returns or raises `UserError` with one line of bounded length, never another exception."""

import json
import struct
from pathlib import Path

import numpy as np
import pytest
import tifffile
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from incasem_like.core.errors import UserError
from incasem_like.stages.convert import TiffStack
from incasem_like.store.datasets import open_dataset
from incasem_like.training.config import load_config
from incasem_like.workflow.pipeline import load_pipeline
from tests.conftest import REPO, write_dataset
from tests.reliability.test_bad_inputs import cell, config

pytestmark = pytest.mark.reliability

FUZZ = settings(
    max_examples=150, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture]
)

#: any value a YAML or JSON file can hold, small
values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)


def paths_in(content, prefix=()) -> list[tuple]:
    """Every key path of a nested mapping (lists by index)."""
    found = []
    items = content.items() if isinstance(content, dict) else enumerate(content) if isinstance(content, list) else []
    for key, value in items:
        found.append((*prefix, key))
        found += paths_in(value, (*prefix, key))
    return found


def mutated(content, path: tuple, value, how: str):
    """`content` with the value at `path` replaced, removed, or given a sibling key."""
    content = json.loads(json.dumps(content))
    *parents, last = path
    target = content
    for key in parents:
        target = target[key]
    if how == "replace":
        target[last] = value
    elif how == "remove":
        del target[last]
    elif isinstance(target, dict):
        target[f"{last}_extra"] = value
    return content


def assert_one_line(error: UserError) -> None:
    message = str(error)
    assert "\n" not in message and 0 < len(message) < 1000, message


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


@pytest.fixture(scope="module")
def training_config(folder) -> dict:
    return yaml.safe_load(config(folder, cell(folder)).read_text())


@FUZZ
@given(data=st.data(), value=values, how=st.sampled_from(["replace", "remove", "add"]))
def test_any_training_config_loads_or_is_one_line(folder, training_config, data, value, how):
    path = data.draw(st.sampled_from(paths_in(training_config)))
    file = folder / "fuzzed.yaml"
    file.write_text(yaml.safe_dump(mutated(training_config, path, value, how)))
    try:
        load_config(file)
    except UserError as error:
        assert_one_line(error)


@FUZZ
@given(data=st.data(), value=values, how=st.sampled_from(["replace", "remove", "add"]))
def test_any_pipeline_file_loads_or_is_one_line(folder, data, value, how):
    pipeline = yaml.safe_load((REPO / "pipelines/predict_cell.yaml").read_text())
    path = data.draw(st.sampled_from(paths_in(pipeline)))
    file = folder / "fuzzed_pipeline.yaml"
    file.write_text(yaml.safe_dump(mutated(pipeline, path, value, how)))
    try:
        load_pipeline(file, ["tiffs=" + str(REPO / "incasem_like/sample_data/lucchi_crop/raw")])
    except UserError as error:
        assert_one_line(error)


@pytest.fixture(scope="module")
def tiff_bytes() -> bytes:
    """A valid 8 x 8 uint8 TIFF slice (uncompressed)."""
    path = Path("/dev/shm" if Path("/dev/shm").is_dir() else "/tmp") / "fuzz_slice.tif"
    tifffile.imwrite(path, np.arange(64, dtype=np.uint8).reshape(8, 8), compression=None)
    data = path.read_bytes()
    path.unlink()
    return data


@FUZZ
@given(offset=st.integers(min_value=0, max_value=255), word=st.integers(min_value=0, max_value=2**32 - 1))
def test_any_tiff_header_is_read_or_is_one_line(folder, tiff_bytes, offset, word):
    data = bytearray(tiff_bytes)
    offset = min(offset, len(data) - 4)
    struct.pack_into("<I", data, offset, word)  # a damaged header: a tag's type, count, value or the IFD offset
    slices = folder / "slices"
    slices.mkdir(exist_ok=True)
    (slices / "slice_0.tif").write_bytes(bytes(data))
    try:
        TiffStack.locate(slices).check()
    except UserError as error:
        assert_one_line(error)


@pytest.fixture(scope="module")
def dataset_metadata(folder) -> tuple[Path, dict, dict]:
    written = write_dataset(folder / "c.zarr/volumes/raw", np.zeros((4, 8, 8), np.uint8), chunk=4)
    group = json.loads((written.group_path / "zarr.json").read_text())
    array = json.loads((written.array_path / "zarr.json").read_text())
    return written.group_path, group, array


@FUZZ
@given(data=st.data(), value=values, how=st.sampled_from(["replace", "remove", "add"]), which=st.booleans())
def test_any_zarr_metadata_opens_or_is_one_line(folder, dataset_metadata, data, value, how, which):
    group_path, group, array = dataset_metadata
    content = group if which else array
    path = data.draw(st.sampled_from(paths_in(content)))
    dataset = folder / "m.zarr/volumes/raw"
    (dataset / "s0").mkdir(parents=True, exist_ok=True)
    (dataset / "zarr.json").write_text(json.dumps(mutated(group, path, value, how) if which else group))
    (dataset / "s0/zarr.json").write_text(json.dumps(array if which else mutated(array, path, value, how)))
    try:
        volume = open_dataset(dataset, require_complete=False)
        volume.read((slice(0, 1), slice(0, 1), slice(0, 1)))
    except UserError as error:
        assert_one_line(error)
