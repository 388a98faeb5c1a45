"""Surfaces of binary masks: closed, outward, in nm, with the areas of the shapes they mesh."""

import math

import numpy as np
import pytest

from incasem_like.ops.surfaces import crop_box, object_mesh, signed_volume, surface_area


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
