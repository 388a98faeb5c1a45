"""Blockwise-exact morphology: balls, small components, the cell mask and the label operations."""

import numpy as np
import pytest
from scipy import ndimage
from skimage.morphology import ball

from incasem_like.ops.morphology import (
    cell_mask,
    cell_mask_context,
    clean_labels,
    dilate,
    dilate_labels,
    erode,
    metric_mask,
    small_components,
    span_limit,
)


def put_ball(volume: np.ndarray, centre, radius: int, value) -> None:
    region = tuple(slice(c - radius, c + radius + 1) for c in centre)
    volume[region][ball(radius).astype(bool)] = value


@pytest.mark.parametrize("radius", [0, 1, 2, 3, 4])
def test_ball_morphology_equals_scipy_with_skimage_ball(radius):
    mask = ndimage.gaussian_filter(np.random.default_rng(radius).random((23, 31, 29)), 1.5) > 0.5
    structure = ball(radius).astype(bool)
    np.testing.assert_array_equal(erode(mask, radius), ndimage.binary_erosion(mask, structure, border_value=0))
    np.testing.assert_array_equal(dilate(mask, radius), ndimage.binary_dilation(mask, structure))


def ellipsoid(radii: tuple[int, int, int]) -> np.ndarray:
    """The ellipsoid of per-axis radii by its definition, (dz/rz)^2 + (dy/ry)^2 + (dx/rx)^2 <= 1 (offset 0 only
    along an axis of radius 0), independently of `ball_runs`."""
    grids = np.meshgrid(*(np.arange(-r, r + 1) for r in radii), indexing="ij")
    return sum((g / max(r, 1)) ** 2 for g, r in zip(grids, radii)) <= 1 + 1e-12


@pytest.mark.parametrize("radii", [(0, 2, 2), (1, 3, 2), (2, 0, 1), (0, 0, 3), (2, 2, 2)])
def test_per_axis_radii_are_the_ellipsoid(radii):
    mask = ndimage.gaussian_filter(np.random.default_rng(sum(radii)).random((15, 31, 29)), 1.5) > 0.5
    structure = ellipsoid(radii)
    np.testing.assert_array_equal(erode(mask, radii), ndimage.binary_erosion(mask, structure, border_value=0))
    np.testing.assert_array_equal(dilate(mask, radii), ndimage.binary_dilation(mask, structure))
    if len(set(radii)) == 1:
        np.testing.assert_array_equal(structure, ball(radii[0]).astype(bool))


def test_an_in_plane_metric_mask_keeps_every_section_apart():
    labels = np.zeros((5, 20, 20), np.uint8)
    labels[2, 5:15, 5:15] = 1  # one section only
    kept = metric_mask(labels, (0, 2, 2), (0, 2, 2))
    assert kept[[0, 1, 3, 4]].all()  # no zone across sections
    assert not kept[2, 3:7, 7:13].any() and kept[2, 9:11, 9:11].all() and kept[2, 0:2].all()


def test_cell_mask_window_morphology_holes_and_objects():
    raw = np.full((96, 96, 96), 230, np.uint8)
    raw[12:52, 12:52, 12:32] = 2  # the window is inclusive: 2 and 180 are cell
    raw[12:52, 12:52, 32:52] = 180
    put_ball(raw, (32, 32, 32), 3, 181)  # a hole
    raw[20, 20, 14:30] = 1  # a one-voxel dark line through the cell: closed
    put_ball(raw, (30, 66, 30), 2, 100)  # a blob thinner than the opening ball: opened away
    put_ball(raw, (30, 30, 66), 4, 100)  # a small object
    put_ball(raw, (30, 30, 84), 4, 100)  # the same object near the border: may continue outside, kept
    span = dict(max_span=10)  # objects are judged 10 + 10 + 1 voxels away from the border

    steps_off = cell_mask(raw, min_hole_voxels=0, min_object_voxels=0)
    result = cell_mask(raw, min_hole_voxels=300, min_object_voxels=300, **span)

    assert result.dtype == np.uint8 and set(np.unique(result)) == {0, 1}
    around_hole, cell, small_box = (slice(26, 39),) * 3, (slice(12, 52),) * 3, np.s_[24:37, 24:37, 60:73]
    hole, small_object = int((steps_off[around_hole] == 0).sum()), int(steps_off[small_box].sum())
    assert 50 < hole < 300 and 50 < small_object < 300 and steps_off[20, 20, 14:30].all()
    filled = steps_off.copy()
    filled[around_hole] = 1
    np.testing.assert_array_equal(result[cell], filled[cell])  # hole filled, nothing else changed
    assert not result[small_box].any()  # small object removed
    assert not steps_off[24:37, 60:73, 24:37].any()  # thin blob opened away
    assert result[24:37, 24:37, 78:91].sum() == small_object  # the object near the border stays
    assert result.sum() == filled[cell].sum() + small_object
    holes_only, objects_only = dict(min_object_voxels=0, **span), dict(min_hole_voxels=0, **span)
    assert cell_mask(raw, min_hole_voxels=hole, **holes_only)[32, 32, 32] == 0  # "smaller than N": N is not
    assert cell_mask(raw, min_hole_voxels=hole + 1, **holes_only)[32, 32, 32] == 1
    assert cell_mask(raw, min_object_voxels=small_object, **objects_only)[30, 30, 66] == 1
    assert cell_mask(raw, min_object_voxels=small_object + 1, **objects_only)[30, 30, 66] == 0
    assert cell_mask(raw, min_hole_voxels=300, max_span=6)[32, 32, 32] == 0  # the hole spans 7: not small


def test_small_means_few_voxels_short_and_clear_of_the_border():
    line = np.zeros((30, 30, 30), bool)
    line[15, 15, 5:25] = True  # 20 voxels in a row
    assert small_components(line, 21, max_span=20).sum() == 20
    assert not small_components(line, 20, max_span=20).any()  # not fewer than 20 voxels
    assert not small_components(line, 21, max_span=19).any()  # longer than 19
    assert not small_components(line, 21, max_span=20, band=6).any()  # reaches into the outer 6 layers
    assert small_components(line, 21, max_span=20, band=5).sum() == 20


def test_default_context_makes_the_method_defaults_exact():
    assert cell_mask_context() == 2 * (3 + 2) + 64 + 64
    assert [span_limit(n, 64) for n in (0, 1, 2, 27, 65, 66, 100000)] == [0, 0, 1, 26, 64, 64, 64]
    assert cell_mask_context(min_hole_voxels=0, min_object_voxels=27) == 10 + 26
    assert cell_mask_context(1, 0, min_hole_voxels=300, min_object_voxels=300, max_span=12) == 2 + 12 + 12


def test_clean_removes_small_objects_and_fills_small_holes():
    labels = np.zeros((40, 40, 40), np.uint8)
    labels[5:8, 5:8, 5:8] = 1  # 27 voxels: kept (objects smaller than 27 go)
    labels[5:8, 20:23, 5:7] = 1  # 18 voxels: removed
    labels[0:2, 30:33, 30:33] = 1  # 18 voxels on the border: may continue outside, kept
    labels[15:35, 15:35, 15:35] = 3  # non-binary labels: foreground is labels > 0
    labels[20:23, 20:23, 20:23] = 0  # a 27-voxel hole
    labels[28:30, 28:30, 28:30] = 0  # an 8-voxel hole

    cleaned = clean_labels(labels, min_object_voxels=27, min_hole_voxels=27, max_span=5)  # holes: 6 layers in

    assert cleaned.dtype == np.uint8 and set(np.unique(cleaned)) == {0, 1}
    expected = labels > 0
    expected[5:8, 20:23, 5:7] = False
    expected[28:30, 28:30, 28:30] = True
    np.testing.assert_array_equal(cleaned, expected)
    np.testing.assert_array_equal(clean_labels(labels), labels > 0)  # 0: steps off
    assert clean_labels(labels, min_hole_voxels=28)[21, 21, 21] == 1


@pytest.mark.parametrize("radius", [0, 1, 3])
def test_dilation_and_metric_mask_use_skimage_balls(radius):
    labels = (ndimage.gaussian_filter(np.random.default_rng(radius).random((20, 24, 28)), 1.5) > 0.55) * 7
    structure = ball(radius).astype(bool)
    dilated = ndimage.binary_dilation(labels > 0, structure) if radius else labels > 0
    eroded = ndimage.binary_erosion(labels > 0, ball(1).astype(bool), border_value=0)
    np.testing.assert_array_equal(dilate_labels(labels.astype(np.int32), radius), dilated)
    np.testing.assert_array_equal(metric_mask(labels.astype(np.uint32), radius, 1), ~(dilated & ~eroded))
    assert metric_mask(labels.astype(np.uint8), 0, 0).all()
