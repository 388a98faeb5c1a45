"""Surfaces of binary masks: closed, outward, in nm, with the areas of the shapes they mesh."""

import math

import numpy as np
import pytest
from scipy.special import ellipeinc, ellipkinc

from incasem_like.ops.surfaces import crop_box, is_closed, object_mesh, signed_volume, surface_area


def edges_of(triangles: np.ndarray) -> np.ndarray:
    return np.concatenate([triangles[:, [0, 1]], triangles[:, [1, 2]], triangles[:, [2, 0]]])


def is_closed_and_oriented(triangles: np.ndarray) -> bool:
    """Every edge is shared by exactly two triangles that run through it in opposite directions."""
    directed = edges_of(triangles)
    _, counts = np.unique(np.sort(directed, axis=1), axis=0, return_counts=True)
    return bool((counts == 2).all() and len(np.unique(directed, axis=0)) == len(directed))


@pytest.mark.parametrize("radius", [6, 12])
def test_a_balls_mesh_is_closed_outward_and_has_its_area(radius):
    n = 2 * radius + 5
    centres = np.indices((n, n, n)) + 0.5
    mask = ((centres - n / 2) ** 2).sum(axis=0) <= radius**2
    vertices, triangles = object_mesh(np.pad(mask, 1), np.array([2.0, 2.0, 2.0]), np.array([-2.0, 0.0, 0.0]))

    assert is_closed_and_oriented(triangles)
    assert signed_volume(vertices[:, ::-1], triangles) == pytest.approx(mask.sum() * 8, rel=0.02)  # outward in x y z
    assert surface_area(vertices, triangles) == pytest.approx(4 * math.pi * (2 * radius) ** 2, rel=0.03)
    np.testing.assert_allclose(vertices.mean(axis=0), np.array([-2, 0, 0]) + n + 2, atol=0.2)  # the ball's centre


def test_crop_box_pads_by_the_step_and_ends_on_a_sample():
    begin, end = crop_box(np.array([5, 5, 5]), np.array([9, 10, 11]))
    assert begin.tolist() == [4, 4, 4] and end.tolist() == [10, 11, 12]
    begin, end = crop_box(np.array([5, 5, 5]), np.array([9, 10, 11]), step=2)
    assert begin.tolist() == [3, 3, 3] and end.tolist() == [12, 12, 14]


def test_raw_marching_cubes_spans_the_bounding_box_and_steps_coarsen():
    mask = np.zeros((12, 14, 16), bool)
    mask[3:9, 2:12, 4:10] = True
    corner = np.array([100.0, 200.0, 300.0])
    voxel_size = np.array([8.0, 5.0, 4.0])

    vertices, triangles = object_mesh(mask, voxel_size, corner, smooth_iterations=0)
    coarse_vertices, coarse = object_mesh(mask, voxel_size, corner, step=2, smooth_iterations=0)

    np.testing.assert_allclose(vertices.min(axis=0), corner + (3, 2, 4) * voxel_size)
    np.testing.assert_allclose(vertices.max(axis=0), corner + (9, 12, 10) * voxel_size)
    assert is_closed_and_oriented(triangles) and is_closed_and_oriented(coarse)
    assert len(coarse_vertices) < len(vertices) / 3
    assert object_mesh(np.zeros((5, 5, 5), bool), voxel_size, corner)[1].shape == (0, 3)


def analytic_shape(kind: str, scale: float, voxel_size: np.ndarray) -> tuple[np.ndarray, float]:
    """(bool mask with a voxel of background around the shape, its analytic area in nm^2): a ball of radius `scale`,
    an ellipsoid of semi-axes (1, 0.7, 0.45) x `scale`, a cylinder along z of length 2 `scale` and radius `scale`/2,
    a torus around z of R = 0.7 `scale` and r = 0.3 `scale`."""
    semi = {"ellipsoid": (1, 0.7, 0.45), "cylinder": (1, 0.5, 0.5), "torus": (0.3, 1, 1)}.get(kind, (1, 1, 1))
    shape = np.ceil(2 * scale * np.array(semi) / voxel_size).astype(int) + 4
    z, y, x = np.meshgrid(*[(np.arange(n) + 0.5 - n / 2) * v for n, v in zip(shape, voxel_size)], indexing="ij")
    if kind in ("ball", "ellipsoid"):
        a, b, c = scale * np.array(semi)
        mask = (z / a) ** 2 + (y / b) ** 2 + (x / c) ** 2 <= 1
        if kind == "ball":
            return mask, 4 * math.pi * scale**2
        phi, k2 = math.acos(c / a), a * a * (b * b - c * c) / (b * b * (a * a - c * c))
        elliptic = ellipeinc(phi, k2) * math.sin(phi) ** 2 + ellipkinc(phi, k2) * (c / a) ** 2
        return mask, 2 * math.pi * c * c + 2 * math.pi * a * b / math.sin(phi) * elliptic
    if kind == "cylinder":
        radius = scale / 2
        return (abs(z) <= scale) & (y**2 + x**2 <= radius**2), 2 * math.pi * radius * (2 * scale + radius)
    big, small = 0.7 * scale, 0.3 * scale
    return (np.hypot(y, x) - big) ** 2 + z**2 <= small**2, 4 * math.pi**2 * big * small


@pytest.mark.parametrize("voxel_size", [(5.0, 5.0, 5.0), (8.0, 5.0, 5.0)])
@pytest.mark.parametrize(
    "kind, tolerance", [("ball", 0.025), ("ellipsoid", 0.02), ("cylinder", 0.035), ("torus", 0.05)]
)
def test_analytic_shapes_have_their_areas_simplified_or_not(kind, tolerance, voxel_size):
    """Semi-axes of 12-24 voxels (60 and 120 nm), anisotropic voxels included: smoothed marching cubes within the
    tolerance of the analytic area (the staircase of raw marching cubes is 5-16% too large on these), enclosing the
    voxels' volume; the default simplification of `mesh` keeps the area within 0.5% with under half the triangles."""
    voxel_size = np.array(voxel_size)
    for scale in (60, 120):
        mask, area = analytic_shape(kind, scale, voxel_size)
        vertices, triangles = object_mesh(mask, voxel_size, np.zeros(3))
        reduced_vertices, reduced = object_mesh(mask, voxel_size, np.zeros(3), reduction=4, max_error=0.25)

        assert is_closed_and_oriented(triangles) and is_closed_and_oriented(reduced)
        assert surface_area(vertices, triangles) == pytest.approx(area, rel=tolerance)
        assert signed_volume(vertices[:, ::-1], triangles) == pytest.approx(mask.sum() * voxel_size.prod(), rel=0.02)
        assert len(reduced) < 0.5 * len(triangles)
        reduced_area = surface_area(reduced_vertices, reduced)
        assert reduced_area == pytest.approx(surface_area(vertices, triangles), rel=0.005)
        assert signed_volume(reduced_vertices[:, ::-1], reduced) == pytest.approx(mask.sum() * voxel_size.prod(), 0.02)


def test_simplification_keeps_small_objects_and_pinched_surfaces_closed():
    """Errors capped at a quarter voxel keep a 3-voxel cube's shape (only its flat faces lose triangles); where the
    reduction would break a surface (noise: it ignores topology), the unreduced surface is kept."""
    cube = np.pad(np.ones((3, 3, 3), bool), 1)
    full, reduced = (object_mesh(cube, np.array([5.0, 5.0, 5.0]), np.zeros(3), reduction=r) for r in (1, 4))
    assert surface_area(*reduced) == pytest.approx(surface_area(*full), rel=0.01)
    assert signed_volume(*reduced) == pytest.approx(signed_volume(*full), rel=0.01)
    rng = np.random.default_rng(1)
    for _ in range(40):
        mask = np.pad(rng.random((8, 8, 8)) < 0.5, 1)
        vertices, triangles = object_mesh(mask, np.array([8.0, 5.0, 5.0]), np.zeros(3), reduction=4)
        assert is_closed(triangles) and is_closed_and_oriented(triangles)
        assert signed_volume(vertices[:, ::-1], triangles) > 0
