"""Closed surfaces of binary masks: marching cubes, Taubin smoothing, area and enclosed volume.

Masks are bool arrays (z, y, x); vertices float64 (n, 3) in nm, world z, y, x; triangles int64 (m, 3) indices,
counter-clockwise seen from outside.

A cube of 3 x 3 x 3 voxels of 2 nm (216 nm^2, 216 nm^3 as voxels; marching cubes bevels its edges and corners):

>>> mask = np.zeros((5, 5, 5), bool)
>>> mask[1:4, 1:4, 1:4] = True
>>> vertices, triangles = object_mesh(mask, np.array([2.0, 2.0, 2.0]), np.zeros(3), smooth_iterations=0)
>>> round(surface_area(vertices, triangles), 1), round(abs(signed_volume(vertices, triangles)), 1)
(170.8, 185.3)
"""

from typing import Annotated

import numpy as np
from pydantic import Field
from scipy import sparse
from skimage.measure import marching_cubes

#: Taubin smoothing of marching-cubes surfaces (iterations; lambda and mu of Taubin 1995)
SMOOTH_ITERATIONS = 10
#: smoothing iterations a config may ask for
Iterations = Annotated[int, Field(ge=0, le=1000)]
TAUBIN_LAMBDA, TAUBIN_MU = 0.5, -0.53


def crop_box(bbox_begin: np.ndarray, bbox_end: np.ndarray, step: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """(begin, end) voxels of the crop around a bounding box for marching cubes with `step`: `step` voxels of
    background before and at least `step` after it, the far end extended so that the last sample (every `step`-th
    voxel) is the crop's last voxel; the surface then closes around the object."""
    begin = np.asarray(bbox_begin) - step
    shape = np.asarray(bbox_end) - np.asarray(bbox_begin) + 2 * step
    shape += -(shape - 1) % step
    return begin, begin + shape


def object_mesh(
    mask: np.ndarray,
    voxel_size: np.ndarray,
    corner: np.ndarray,
    step: int = 1,
    smooth_iterations: int = SMOOTH_ITERATIONS,
) -> tuple[np.ndarray, np.ndarray]:
    """Closed surface of a bool crop (`crop_box`): vertices (n, 3) in nm, world z, y, x, and triangles (m, 3),
    counter-clockwise seen from outside. `corner` is the world position (nm) of the crop's first voxel corner.

    Marching cubes at level 0.5 on the binary mask (vertices on the faces between object and background voxels;
    `step` > 1 samples every step-th voxel, for coarse meshes), then `smooth_iterations` Taubin steps. Empty arrays
    if the samples miss the object (objects smaller than `step`)."""
    if not mask[::step, ::step, ::step].any():
        return np.zeros((0, 3)), np.zeros((0, 3), dtype=np.int64)
    voxel_size = np.asarray(voxel_size, dtype=np.float64)
    vertices, triangles, _, _ = marching_cubes(
        mask.astype(np.float32), level=0.5, spacing=tuple(voxel_size), step_size=step
    )
    vertices = taubin_smooth(vertices.astype(np.float64), triangles, smooth_iterations)
    vertices += np.asarray(corner, dtype=np.float64) + voxel_size / 2  # crop voxel 0's centre in the world
    triangles = triangles.astype(np.int64)
    if signed_volume(vertices, triangles) > 0:  # z, y, x is a mirror image of x, y, z: make the x, y, z winding CCW
        triangles = triangles[:, ::-1]
    return vertices, triangles


def taubin_smooth(vertices: np.ndarray, triangles: np.ndarray, iterations: int) -> np.ndarray:
    """Taubin's lambda/mu smoothing (uniform neighbour weights): removes the staircase, barely shrinking."""
    if iterations == 0 or len(triangles) == 0:
        return vertices
    count = len(vertices)
    edges = np.concatenate([triangles[:, [0, 1]], triangles[:, [1, 2]], triangles[:, [2, 0]]])
    adjacency = sparse.coo_matrix((np.ones(len(edges)), (edges[:, 0], edges[:, 1])), shape=(count, count)).tocsr()
    adjacency = ((adjacency + adjacency.T) > 0).astype(np.float64)
    neighbour_mean = sparse.diags(1.0 / np.asarray(adjacency.sum(axis=1)).ravel()) @ adjacency
    for _ in range(iterations):
        for factor in (TAUBIN_LAMBDA, TAUBIN_MU):
            vertices = vertices + factor * (neighbour_mean @ vertices - vertices)
    return vertices


def signed_volume(vertices: np.ndarray, triangles: np.ndarray) -> float:
    """Volume enclosed by a closed mesh, positive when its triangles are counter-clockwise seen from outside in
    the vertices' own axis order."""
    a, b, c = (vertices[triangles[:, i]] for i in range(3))
    return float(np.einsum("ij,ij->i", a, np.cross(b, c)).sum() / 6)


def surface_area(vertices: np.ndarray, triangles: np.ndarray) -> float:
    a, b, c = (vertices[triangles[:, i]] for i in range(3))
    return float(np.linalg.norm(np.cross(b - a, c - a), axis=1).sum() / 2)
