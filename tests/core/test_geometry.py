import pytest

from incasem_like.core.geometry import Coordinate, Roi, roi_from_voxels, roi_to_voxels


def test_voxel_boxes_convert_to_world_rois_and_back():
    roi = roi_from_voxels((1, 2, 3), (4, 5, 6), (10, 5, 5), origin=(100, 0, -5))
    assert roi == Roi((110, 10, 10), (40, 25, 30))
    assert roi_to_voxels(roi, (10, 5, 5), origin=(100, 0, -5)) == (Coordinate(1, 2, 3), Coordinate(4, 5, 6))


def test_off_grid_roi_is_refused():
    with pytest.raises(ValueError, match="not aligned"):
        roi_to_voxels(Roi((3, 0, 0), (10, 10, 10)), (5, 5, 5))
