import numpy as np
import pytest
import zarr
from funlib.persistence import open_ds

from incasem_like.core.errors import UserError
from incasem_like.core.geometry import Roi
from incasem_like.store.datasets import (
    RAW,
    DatasetPath,
    create_dataset,
    labels_name,
    metric_mask_name,
    ome_multiscales,
    open_dataset,
    prediction_names,
    update_dataset_meta,
)


@pytest.mark.parametrize(
    "text, container, name",
    [
        ("cell_6.zarr/volumes/raw", "cell_6.zarr", "volumes/raw"),
        ("/data/cells/cell_6.zarr/volumes/labels/mito", "/data/cells/cell_6.zarr", "volumes/labels/mito"),
        ("a.zarr/b.zarr/raw", "a.zarr", "b.zarr/raw"),
    ],
)
def test_dataset_paths_split_at_the_container(text, container, name):
    path = DatasetPath.parse(text)
    assert (str(path.container), path.name) == (container, name)
    assert str(path) == text and path.array_path.name == "s0"


@pytest.mark.parametrize("text", ["cell_6.zarr", "cell_6/volumes/raw", "volumes/raw"])
def test_paths_without_dataset_inside_a_container_are_refused(text):
    with pytest.raises(UserError, match="CONTAINER.zarr/DATASET"):
        DatasetPath.parse(text)


def test_conventional_names():
    assert RAW == "volumes/raw"
    assert labels_name("er") == "volumes/labels/er" and metric_mask_name("er") == "volumes/metric_masks/er"
    assert prediction_names("run1", "mito") == (
        "volumes/predictions/run1/mito/probabilities",
        "volumes/predictions/run1/mito/segmentation",
    )


def test_created_dataset_round_trips_voxel_size_and_offset(tmp_path, rng):
    path = DatasetPath.parse(tmp_path / "cell.zarr/volumes/raw")
    data = rng.integers(0, 256, (10, 12, 14), dtype=np.uint8)
    array = create_dataset(path, data.shape, (8, 4, 4), (80, -40, 400), np.uint8, (4, 8, 8))
    array[array.roi] = data
    update_dataset_meta(path, complete=True)

    ours, funlib_view = open_dataset(path), open_ds(str(path.array_path))
    for opened in (ours, funlib_view):
        assert tuple(opened.voxel_size) == (8, 4, 4) and tuple(opened.offset) == (80, -40, 400)
        assert opened.roi == Roi((80, -40, 400), (80, 48, 56))
        np.testing.assert_array_equal(opened[opened.roi], data)
    assert zarr.open_array(path.array_path).metadata.dimension_names == ("z", "y", "x")


def test_incomplete_dataset_is_refused_as_input(tmp_path):
    path = DatasetPath.parse(tmp_path / "cell.zarr/volumes/raw")
    create_dataset(path, (4, 4, 4), (5, 5, 5), (0, 0, 0), np.uint8)
    with pytest.raises(UserError, match="is incomplete.*rerun the command that writes it"):
        open_dataset(path)
    assert open_dataset(path, require_complete=False).shape == (4, 4, 4)


def test_dataset_from_another_ome_zarr_writer_opens(tmp_path):
    """A plain OME-Zarr 0.5 image (no funlib attributes, no bookkeeping) opens with its scale and translation."""
    group = zarr.open_group(tmp_path / "other.zarr/em", mode="w")
    group.attrs["ome"] = ome_multiscales("em", (10, 4, 4), (30, 0, 8))
    group.create_array("s0", shape=(3, 5, 7), dtype=np.uint16, fill_value=7)
    array = open_dataset(tmp_path / "other.zarr/em")
    assert tuple(array.voxel_size) == (10, 4, 4) and tuple(array.offset) == (30, 0, 8)
    assert int(array[array.roi].min()) == 7


def test_translation_of_a_corner_convention_writer_stays_on_the_voxel_grid(tmp_path):
    group = zarr.open_group(tmp_path / "other.zarr/em", mode="w")
    metadata = ome_multiscales("em", (10, 4, 4), (0, 0, 0))
    metadata["multiscales"][0]["datasets"][0]["coordinateTransformations"][1]["translation"] = [30.0, 0.0, 8.0]
    group.attrs["ome"] = metadata
    group.create_array("s0", shape=(3, 5, 7), dtype=np.uint8)
    assert tuple(open_dataset(tmp_path / "other.zarr/em").offset) == (30, 0, 8)


def test_pyramid_levels_share_the_first_voxel_corner():
    transforms = [
        d["coordinateTransformations"]
        for d in ome_multiscales("x", (5, 5, 5), (10, 0, 0), 3)["multiscales"][0]["datasets"]
    ]
    for level, (scale, translation) in enumerate(transforms):
        size = 5 * 2**level
        assert scale["scale"] == [size] * 3
        assert [t - size / 2 for t in translation["translation"]] == [10, 0, 0]


def test_non_nanometre_units_are_refused(tmp_path):
    group = zarr.open_group(tmp_path / "other.zarr/em", mode="w")
    metadata = ome_multiscales("em", (1, 1, 1), (0, 0, 0))
    for axis in metadata["multiscales"][0]["axes"]:
        axis["unit"] = "micrometer"
    group.attrs["ome"] = metadata
    group.create_array("s0", shape=(3, 5, 7), dtype=np.uint8)
    with pytest.raises(UserError, match="not all 'nanometer'"):
        open_dataset(tmp_path / "other.zarr/em")


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"offset": (3, 0, 0)}, "not a multiple of the voxel size"),
        ({"voxel_size": (0, 5, 5)}, "must be positive"),
    ],
)
def test_bad_geometry_is_refused(tmp_path, kwargs, message):
    arguments = {"shape": (4, 4, 4), "voxel_size": (5, 5, 5), "offset": (0, 0, 0), "dtype": np.uint8, **kwargs}
    with pytest.raises(UserError, match=message):
        create_dataset(DatasetPath.parse(tmp_path / "c.zarr/raw"), **arguments)


def test_missing_dataset_names_the_path(tmp_path):
    with pytest.raises(UserError, match="no such dataset"):
        open_dataset(tmp_path / "c.zarr/volumes/raw")
