import doctest

import numpy as np
import pytest

from incasem_like.core import geometry
from incasem_like.core.geometry import Coordinate, Roi, roi_from_voxels, roi_to_voxels, to_nm, to_world


def test_voxel_boxes_convert_to_world_rois_and_back():
    roi = roi_from_voxels((1, 2, 3), (4, 5, 6), (10, 5, 5), origin=(100, 0, -5))
    assert roi == Roi((110, 10, 10), (40, 25, 30))
    assert roi_to_voxels(roi, (10, 5, 5), origin=(100, 0, -5)) == (Coordinate(1, 2, 3), Coordinate(4, 5, 6))


def test_off_grid_roi_is_refused():
    with pytest.raises(ValueError, match="not aligned"):
        roi_to_voxels(Roi((3, 0, 0), (10, 10, 10)), (5, 5, 5))


def test_the_examples_in_the_docstrings_hold():
    result = doctest.testmod(geometry)
    assert result.attempted >= 4 and result.failed == 0


@pytest.mark.parametrize("nm", [50, 4.6, 3.2, 9.8, 2.32, 0.4, 0.03925, 1e-6, 100000])
def test_voxel_sizes_are_exact_in_world_units_and_back_in_nm(nm):
    assert to_nm(to_world((nm,))) == (nm,)


@pytest.mark.parametrize("header_angstrom", [0.3925, 0.448, 11.4, 23.2, 2.32, 1.0823])
def test_32_bit_header_values_are_within_the_rounding_tolerated(header_angstrom):
    nm = float(np.float32(header_angstrom)) / 10
    assert to_world((nm,))[0] == round(header_angstrom * 100_000)


@pytest.mark.parametrize("nm", [1 / 3, 0.0123456789, 1e-7])
def test_lengths_finer_than_the_world_unit_are_refused(nm):
    with pytest.raises(ValueError, match="more precision than 1e-6 nm"):
        to_world((nm,))
