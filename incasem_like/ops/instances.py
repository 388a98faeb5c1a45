"""Instances that separate touching objects: seed classes from a clipped distance transform, seeds grown through
the foreground, and per-label statistics of an id volume. Every value depends only on a bounded neighbourhood,
so a block read with `split_context` voxels of context computes the whole volume's values exactly.

The rule (voxel sizes in nm, (z, y, x)): a foreground voxel is a **core** voxel when its Euclidean distance (voxel
centres, physical units) to the nearest background voxel of the dataset is at least `seed_distance` (the dataset's
outside is not background). Connected cores (face connectivity) are the seeds. Each seed grows through the
foreground in rounds of one face step, `steps` rounds (`reach_steps`): in each round every unlabelled foreground
voxel takes the largest label among its labelled face neighbours, so labels follow the foreground and never jump
across background, and a voxel that two seeds reach in the same round goes to the larger label. Foreground that
no seed reaches (objects thinner than twice the seed distance, far ends of long objects) is **unreached**: its
connected components are instances of their own.

Foreground and masks are bool, seed classes uint8 (0 background or reached, `CORE`, `UNREACHED`), ids any
unsigned integer dtype.

>>> foreground = np.zeros((1, 9, 17), bool)
>>> foreground[0, 1:8, 1:8] = foreground[0, 1:8, 9:16] = foreground[0, 4, 8] = True  # two squares, a bridge
>>> classes = seed_classes(foreground, np.array([5.0, 5.0, 5.0]), 15.0, 3)
>>> classes[0, 4].tolist(), classes[0, 1].tolist()  # the corners are beyond 3 steps
([0, 0, 0, 1, 1, 1, 0, 0, 0, 0, 0, 1, 1, 1, 0, 0, 0], [0, 2, 0, 0, 0, 0, 0, 2, 0, 2, 0, 0, 0, 0, 0, 2, 0])
>>> grow_seeds(ndimage.label(classes == CORE)[0], foreground, 3)[0, 4].tolist()
[0, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 0]
"""

import math

import numpy as np
from scipy import ndimage

from incasem_like.ops.components import fragment_statistics
from incasem_like.ops.morphology import FACE_CONNECTIVITY

CORE, UNREACHED = 1, 2


def reach_steps(reach_nm: float, voxel_size: np.ndarray) -> int:
    """Growth rounds for a reach in nm: face steps of the smallest voxel edge, rounded up, at least one.

    >>> reach_steps(100.0, np.array([8.0, 5.0, 5.0])), reach_steps(1.0, np.array([5.0, 5.0, 5.0]))
    (20, 1)
    """
    return max(1, math.ceil(reach_nm / float(np.min(voxel_size)) - 1e-9))


def split_context(voxel_size: np.ndarray, seed_distance: float, steps: int) -> tuple[np.ndarray, np.ndarray]:
    """Context (voxels per axis) of (`seed_classes`, `grow_seeds`): the core test looks `seed_distance` nm
    away, the growth `steps` voxels along faces, and the unreached test both."""
    distance = np.ceil(seed_distance / np.asarray(voxel_size, np.float64) - 1e-9).astype(np.int64)
    return distance + steps, np.full(3, steps, np.int64)


def seed_classes(foreground: np.ndarray, voxel_size: np.ndarray, seed_distance: float, steps: int) -> np.ndarray:
    """uint8 classes of the module's rule: `CORE`, `UNREACHED` foreground, 0 elsewhere (background and reached
    foreground). Exact on voxels at least `split_context(...)[0]` voxels from the array's faces that are not the
    dataset's."""
    if not (~foreground).any():
        core = foreground.copy()
    else:
        distance = ndimage.distance_transform_edt(foreground, sampling=np.asarray(voxel_size, np.float64))
        core = foreground & (distance >= seed_distance)
    reached = (
        ndimage.binary_dilation(core, FACE_CONNECTIVITY, iterations=steps, mask=foreground) if core.any() else core
    )
    classes = np.zeros(foreground.shape, np.uint8)
    classes[core] = CORE
    classes[foreground & ~reached] = UNREACHED
    return classes


def grow_seeds(seeds: np.ndarray, foreground: np.ndarray, steps: int) -> np.ndarray:
    """`seeds` (ids > 0 on core voxels, 0 elsewhere) grown through `foreground` for `steps` rounds (the module's
    rule); same dtype. Exact on voxels at least `steps` voxels from the array's faces that are not the dataset's."""
    labels = seeds.copy()
    for _ in range(steps):
        neighbours = np.zeros_like(labels)
        for axis in range(3):
            for shift in (1, -1):
                rolled = np.roll(labels, shift, axis=axis)
                edge = [slice(None)] * 3
                edge[axis] = slice(0, 1) if shift == 1 else slice(-1, None)
                rolled[tuple(edge)] = 0  # no wrapping around
                np.maximum(neighbours, rolled, out=neighbours)
        new = foreground & (labels == 0) & (neighbours > 0)
        if not new.any():
            break
        labels[new] = neighbours[new]
    return labels


def label_statistics(ids: np.ndarray, begin: np.ndarray, volume_shape) -> tuple[np.ndarray, dict]:
    """The labels present in an id block (> 0, ascending, int64) and their partial statistics with the keys and
    meaning of `incasem_like.ops.components.block_fragments` (global voxel indices; `begin` is the block's first
    voxel), so that `merge_fragments` unites them across blocks.

    >>> present, stats = label_statistics(np.array([[[0, 7, 7], [3, 0, 7]]]), np.array([0, 0, 0]), (1, 2, 3))
    >>> present.tolist(), stats["count"].tolist(), stats["first"].tolist()
    ([3, 7], [1, 3], [3, 1])
    """
    present, inverse = np.unique(ids, return_inverse=True)
    inverse = inverse.reshape(ids.shape)
    if present.size and present[0] == 0:
        present = present[1:]
    else:
        inverse = inverse + 1
    stats = fragment_statistics(inverse, len(present), begin, volume_shape)
    return present.astype(np.int64), stats
