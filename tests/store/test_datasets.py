import numpy as np
import pytest
import zarr
from funlib.persistence import open_ds

from incasem_like.core.errors import UserError
from incasem_like.core.geometry import Coordinate, Roi, to_world
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
    array = create_dataset(path, data.shape, to_world((8, 4, 4)), to_world((80, -40, 400)), np.uint8, (4, 8, 8))
    array[array.roi] = data
    update_dataset_meta(path, complete=True)

    ours, funlib_view = open_dataset(path), open_ds(str(path.array_path))
    for opened in (ours, funlib_view):
        assert opened.voxel_size == to_world((8, 4, 4)) and opened.offset == to_world((80, -40, 400))
        assert opened.roi == Roi(to_world((80, -40, 400)), to_world((80, 48, 56)))
        np.testing.assert_array_equal(opened[opened.roi], data)
    assert zarr.open_array(path.array_path).metadata.dimension_names == ("z", "y", "x")


@pytest.mark.parametrize("voxel_size_nm", [(50, 4.6, 4.6), (3.2, 4, 4), (9.8, 9.8, 9.8), (0.045875, 0.03925, 0.044825)])
def test_non_integer_voxel_sizes_are_exact_in_the_ome_metadata_and_the_world_grid(tmp_path, voxel_size_nm):
    path = DatasetPath.parse(tmp_path / "cell.zarr/volumes/raw")
    offset_nm = tuple(3 * v for v in voxel_size_nm)
    create_dataset(path, (4, 5, 6), to_world(voxel_size_nm), to_world(offset_nm), np.uint8)
    update_dataset_meta(path, complete=True)
    transforms = zarr.open_group(path.group_path).attrs["ome"]["multiscales"][0]["datasets"][0]
    scale, translation = (t[t["type"]] for t in transforms["coordinateTransformations"])
    assert scale == list(voxel_size_nm)  # the float the user gave, as written in the metadata
    assert translation == pytest.approx([o + v / 2 for o, v in zip(offset_nm, voxel_size_nm)], rel=1e-12)
    opened = open_dataset(path)
    assert opened.voxel_size_nm == tuple(voxel_size_nm) and opened.offset_nm == pytest.approx(offset_nm, rel=1e-12)
    assert opened.roi.shape == to_world(voxel_size_nm) * Coordinate(4, 5, 6)


def test_incomplete_dataset_is_refused_as_input(tmp_path):
    path = DatasetPath.parse(tmp_path / "cell.zarr/volumes/raw")
    create_dataset(path, (4, 4, 4), to_world((5, 5, 5)), (0, 0, 0), np.uint8)
    with pytest.raises(UserError, match="is incomplete.*rerun the command that writes it"):
        open_dataset(path)
    assert open_dataset(path, require_complete=False).shape == (4, 4, 4)


def test_dataset_from_another_ome_zarr_writer_opens(tmp_path):
    """A plain OME-Zarr 0.5 image (no funlib attributes, no bookkeeping) opens with its scale and translation."""
    group = zarr.open_group(tmp_path / "other.zarr/em", mode="w")
    group.attrs["ome"] = ome_multiscales("em", to_world((10, 4, 4)), to_world((30, 0, 8)))
    group.create_array("s0", shape=(3, 5, 7), dtype=np.uint16, fill_value=7)
    array = open_dataset(tmp_path / "other.zarr/em")
    assert array.voxel_size_nm == (10, 4, 4) and array.offset_nm == (30, 0, 8)
    assert int(array[array.roi].min()) == 7


def test_translation_of_a_corner_convention_writer_stays_on_the_voxel_grid(tmp_path):
    group = zarr.open_group(tmp_path / "other.zarr/em", mode="w")
    metadata = ome_multiscales("em", to_world((10, 4, 4)), (0, 0, 0))
    metadata["multiscales"][0]["datasets"][0]["coordinateTransformations"][1]["translation"] = [30.0, 0.0, 8.0]
    group.attrs["ome"] = metadata
    group.create_array("s0", shape=(3, 5, 7), dtype=np.uint8)
    assert open_dataset(tmp_path / "other.zarr/em").offset_nm == (30, 0, 8)


def test_pyramid_levels_share_the_first_voxel_corner():
    transforms = [
        d["coordinateTransformations"]
        for d in ome_multiscales("x", to_world((5, 5, 5)), to_world((10, 0, 0)), 3)["multiscales"][0]["datasets"]
    ]
    for level, (scale, translation) in enumerate(transforms):
        size = 5 * 2**level
        assert scale["scale"] == [size] * 3
        assert [t - size / 2 for t in translation["translation"]] == [10, 0, 0]


def test_other_length_units_are_read_in_nm_and_unknown_ones_refused(tmp_path):
    group = zarr.open_group(tmp_path / "other.zarr/em", mode="w")
    metadata = ome_multiscales("em", to_world((1, 1, 1)), (0, 0, 0))
    for unit, scale in (("micrometer", 0.0098), ("angstrom", 98), ("nanometer", 9.8)):
        for axis in metadata["multiscales"][0]["axes"]:
            axis["unit"] = unit
        transforms = metadata["multiscales"][0]["datasets"][0]["coordinateTransformations"]
        transforms[0]["scale"], transforms[1]["translation"] = [scale] * 3, [scale / 2] * 3
        group.attrs["ome"] = metadata
        group.create_array("s0", shape=(3, 5, 7), dtype=np.uint8, overwrite=True)
        assert open_dataset(tmp_path / "other.zarr/em").voxel_size_nm == (9.8, 9.8, 9.8), unit
    metadata["multiscales"][0]["axes"][0]["unit"] = "parsec"
    group.attrs["ome"] = metadata
    with pytest.raises(UserError, match="axis units .*'parsec'.* are not lengths this tool reads"):
        open_dataset(tmp_path / "other.zarr/em")
    metadata["multiscales"][0]["axes"][0]["unit"] = []  # not even a name (found by tests/reliability/test_fuzz.py)
    group.attrs["ome"] = metadata
    with pytest.raises(UserError, match=r"axis units \[\[\], .* are not lengths this tool reads"):
        open_dataset(tmp_path / "other.zarr/em")


def test_a_voxel_size_finer_than_the_world_unit_is_refused(tmp_path):
    group = zarr.open_group(tmp_path / "other.zarr/em", mode="w")
    metadata = ome_multiscales("em", to_world((1, 1, 1)), (0, 0, 0))
    metadata["multiscales"][0]["datasets"][0]["coordinateTransformations"][0]["scale"] = [1 / 3, 1.0, 1.0]
    group.attrs["ome"] = metadata
    group.create_array("s0", shape=(3, 5, 7), dtype=np.uint8)
    with pytest.raises(UserError, match=r"em: voxel size .* more precision than 1e-6 nm .*; round it"):
        open_dataset(tmp_path / "other.zarr/em")


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"offset": to_world((3, 0, 0))}, "not a multiple of the voxel size"),
        ({"voxel_size": (0, 5, 5)}, "must be positive"),
    ],
)
def test_bad_geometry_is_refused(tmp_path, kwargs, message):
    arguments = {
        "shape": (4, 4, 4),
        "voxel_size": to_world((5, 5, 5)),
        "offset": (0, 0, 0),
        "dtype": np.uint8,
        **kwargs,
    }
    with pytest.raises(UserError, match=message):
        create_dataset(DatasetPath.parse(tmp_path / "c.zarr/raw"), **arguments)


def test_missing_dataset_names_the_path(tmp_path):
    with pytest.raises(UserError, match="no such dataset"):
        open_dataset(tmp_path / "c.zarr/volumes/raw")
