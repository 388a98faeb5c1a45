"""Morphometrics against analytic shapes (balls, ellipsoids, cylinders, tori) with anisotropic and non-integer
voxel sizes; each tolerance is stated where it is asserted."""

import math

import numpy as np
import pytest

from incasem_like.ops.morphometrics import (
    cross_sections,
    ellipsoid_fit,
    equivalent_diameter,
    nearest_distance,
    skeleton_measures,
    sphericity,
)
from incasem_like.ops.surfaces import object_mesh, surface_area


def centres(shape, voxel_size) -> np.ndarray:
    """Voxel centres in nm, (3, *shape)."""
    return (np.indices(shape).T + 0.5).T * np.asarray(voxel_size, float)[:, None, None, None]


def rotation(angle: float) -> np.ndarray:
    """A rotation by `angle` about the z axis (acting on y, x)."""
    c, s = math.cos(angle), math.sin(angle)
    return np.array([[1, 0, 0], [0, c, -s], [0, s, c]])


def ellipsoid(shape, voxel_size, semi_axes, turn=0.0) -> np.ndarray:
    """A solid ellipsoid at the crop's centre, semi-axes (z, y, x) in nm, turned by `turn` about z."""
    points = centres(shape, voxel_size).reshape(3, -1).T - np.array(shape) * np.asarray(voxel_size) / 2
    local = points @ rotation(turn)  # into the ellipsoid's own frame
    return (((local / np.asarray(semi_axes)) ** 2).sum(axis=1) <= 1).reshape(shape)


def covariance_nm2(mask, voxel_size) -> np.ndarray:
    points = np.argwhere(mask) * np.asarray(voxel_size, float)
    return np.cov(points.T, bias=True)


@pytest.mark.parametrize("voxel_size", [(5.0, 5.0, 5.0), (8.0, 4.6, 4.6), (3.2, 4.0, 4.4)])
def test_a_ball_is_round_and_its_equivalent_diameter_is_its_own(voxel_size):
    r = 80.0
    shape = tuple(int(2 * r / v) + 6 for v in voxel_size)
    ball = ellipsoid(shape, voxel_size, (r, r, r))
    volume = ball.sum() * np.prod(voxel_size)
    area = surface_area(*object_mesh(ball, np.array(voxel_size), np.zeros(3)))
    assert equivalent_diameter(volume) == pytest.approx(2 * r, rel=0.01)  # voxel volume within 3%: diameter 1%
    assert 0.96 < sphericity(volume, area) <= 1.02  # area within 3% (object_mesh's tolerance)
    axes, _ = ellipsoid_fit(covariance_nm2(ball, voxel_size))
    np.testing.assert_allclose(axes, 2 * r, rtol=0.03)


@pytest.mark.parametrize("voxel_size", [(5.0, 5.0, 5.0), (8.0, 4.6, 4.6)])
def test_a_turned_ellipsoid_gives_back_its_axes_and_orientation(voxel_size):
    semi_axes, turn = (40.0, 60.0, 120.0), math.radians(30)  # the major axis along x, then turned in y, x
    shape = tuple(int(260 / v) for v in voxel_size)
    mask = ellipsoid(shape, voxel_size, semi_axes, turn)
    axes, major = ellipsoid_fit(covariance_nm2(mask, voxel_size))
    np.testing.assert_allclose(axes, (240, 120, 80), rtol=0.03)  # full axes within 3%
    expected = rotation(turn) @ np.array([0.0, 0.0, 1.0])
    expected *= np.sign(expected[np.flatnonzero(np.abs(expected) > 1e-12)[0]])
    assert abs(float(major @ expected)) > math.cos(math.radians(2))  # direction within 2 degrees
    assert sphericity(mask.sum() * np.prod(voxel_size), 1.0) > 0  # defined for any positive area


@pytest.mark.parametrize("voxel_size", [(5.0, 5.0, 5.0), (7.5, 4.6, 4.6)])
def test_a_cylinder_has_constant_round_sections_and_a_straight_skeleton(voxel_size):
    r, length = 40.0, 600.0  # nm, along z
    shape = (int(length / voxel_size[0]) + 4, int(2 * r / voxel_size[1]) + 8, int(2 * r / voxel_size[2]) + 8)
    z, y, x = centres(shape, voxel_size)
    cy, cx = shape[1] * voxel_size[1] / 2, shape[2] * voxel_size[2] / 2
    cylinder = ((y - cy) ** 2 + (x - cx) ** 2 <= r**2) & (z > 2 * voxel_size[0]) & (z < length + 2 * voxel_size[0])
    sections = cross_sections(cylinder, np.array(voxel_size), axis=0)
    assert sections["section_count"] == int(cylinder.any(axis=(1, 2)).sum())
    assert sections["section_axis1_mean_nm"] == pytest.approx(2 * r, rel=0.03)  # 2D axes within 3%
    assert sections["section_axis2_mean_nm"] == pytest.approx(2 * r, rel=0.03)
    assert sections["section_perimeter_mean_nm"] == pytest.approx(2 * math.pi * r, rel=0.02)  # perimeter within 2%
    assert sections["section_perimeter_sd_nm"] == pytest.approx(0, abs=1e-9)  # every slice is the same disk
    skeleton_length, branches = skeleton_measures(cylinder, np.array(voxel_size))
    assert branches == 1 and skeleton_length == pytest.approx(length, abs=r)  # TEASAR ends on the caps' rims


def test_sections_of_an_ellipsoid_vary_along_the_axis_and_follow_the_chosen_axis():
    voxel_size = (4.0, 4.0, 4.0)
    mask = ellipsoid((60, 60, 90), voxel_size, (100.0, 60.0, 160.0))
    along_z = cross_sections(mask, np.array(voxel_size), axis=0)
    along_x = cross_sections(mask, np.array(voxel_size), axis=2)
    assert along_z["section_count"] == 50 and along_x["section_count"] == 80  # the slices it spans
    # the mean of the section's axis over slices: the axis times pi/4 (mean of sqrt(1 - t^2) over t in [-1, 1])
    assert along_z["section_axis1_mean_nm"] == pytest.approx(320 * math.pi / 4, rel=0.04)
    assert along_x["section_axis1_mean_nm"] == pytest.approx(200 * math.pi / 4, rel=0.04)
    assert along_z["section_axis1_sd_nm"] > 0.2 * along_z["section_axis1_mean_nm"]


@pytest.mark.parametrize("voxel_size", [(5.0, 5.0, 5.0), (6.4, 5.0, 5.0)])
def test_a_torus_skeleton_runs_along_its_centre_circle(voxel_size):
    big, small = 150.0, 35.0  # nm: the centre circle's radius, the tube's
    shape = (int(2 * small / voxel_size[0]) + 6, *(int(2 * (big + small) / v) + 6 for v in voxel_size[1:]))
    z, y, x = centres(shape, voxel_size) - (np.array(shape) * np.array(voxel_size) / 2)[:, None, None, None]
    torus = (np.hypot(y, x) - big) ** 2 + z**2 <= small**2
    assert torus.sum() * np.prod(voxel_size) == pytest.approx(2 * math.pi**2 * big * small**2, rel=0.03)
    skeleton_length, branches = skeleton_measures(torus, np.array(voxel_size))
    assert skeleton_length == pytest.approx(2 * math.pi * big, rel=0.05)  # length within 5%
    assert 1 <= branches <= 8  # TEASAR makes trees: the ring comes back in a few branches


def test_three_arms_are_three_branches():
    voxel_size, r, arm = np.array([5.0, 5.0, 5.0]), 30.0, 300.0
    shape = (20, 150, 150)
    points = centres(shape, voxel_size).reshape(3, -1).T - np.array([50.0, 375.0, 375.0])
    mask = np.zeros(len(points), bool)
    for angle in (0, 2 * math.pi / 3, 4 * math.pi / 3):
        direction = np.array([0.0, math.sin(angle), math.cos(angle)])
        along = np.clip(points @ direction, 0, arm)
        mask |= np.linalg.norm(points - along[:, None] * direction, axis=1) <= r
    skeleton_length, branches = skeleton_measures(mask.reshape(shape), voxel_size)
    assert branches == 3 and skeleton_length == pytest.approx(3 * (arm + r), abs=3 * r)  # to the tips, r each


def test_the_distance_between_two_balls_is_the_gap_between_their_surfaces():
    voxel_size = np.array([4.0, 5.0, 5.0])
    shape = (40, 32, 80)
    points = centres(shape, voxel_size)
    first = ((points - np.array([80, 80, 100])[:, None, None, None]) ** 2).sum(axis=0) <= 50**2
    second = ((points - np.array([80, 80, 300])[:, None, None, None]) ** 2).sum(axis=0) <= 60**2
    gap = 300 - 100 - 50 - 60
    assert nearest_distance(first, second, voxel_size) == pytest.approx(gap, abs=voxel_size.max())  # one voxel
    assert nearest_distance(first, first, voxel_size) == 0
    assert nearest_distance(first, np.zeros(shape, bool), voxel_size) == math.inf
