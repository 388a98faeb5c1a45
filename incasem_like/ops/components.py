"""Connected components of a volume too large to label at once: per-block labels, the pairs of fragments that
touch across block faces, and their union into objects numbered like one `scipy.ndimage.label` call.

Foreground is bool (z, y, x); fragment ids uint32, local to their block (0 = background); statistics use global
voxel indices as int64 / float64. Face connectivity throughout. Blocks are labelled by connected-components-3d
(cc3d: ~1.9x faster than `scipy.ndimage.label` on a 256^3 block of organelle-sized blobs, benchmarks/mesh.py),
which numbers the components of a C-ordered array in raster order of their first voxel, as scipy does.

>>> foreground = np.array([[[1, 0, 1], [1, 0, 1]]], bool)
>>> local, stats = block_fragments(foreground, np.array([0, 0, 0]), (1, 2, 3))
>>> local.tolist(), stats["count"].tolist()
([[[1, 0, 2], [1, 0, 2]]], [2, 2])
>>> touching_pairs(np.array([[1, 0], [2, 2]]), np.array([[3, 3], [0, 4]])).tolist()
[[1, 3], [2, 4]]
"""

import cc3d
import numpy as np
from scipy import ndimage, sparse
from scipy.sparse.csgraph import connected_components

#: the per-fragment statistics of `block_fragments`
STAT_KEYS = ("count", "sums", "moments", "bbox_begin", "bbox_end", "first")
#: second moments stored per fragment/object: sums of z*z, z*y, z*x, y*y, y*x, x*x (voxel indices)
MOMENT_PAIRS = ((0, 0), (0, 1), (0, 2), (1, 1), (1, 2), (2, 2))


def block_fragments(foreground: np.ndarray, begin: np.ndarray, volume_shape) -> tuple[np.ndarray, dict]:
    """Label one block (face connectivity) and return (local ids, per-fragment partial statistics).

    `begin` is the block's first voxel in the volume (voxel indices), `volume_shape` the volume's shape; the
    statistics use global voxel indices: count, sums (n, 3), second moments (n, 6: `MOMENT_PAIRS`), bbox_begin and
    bbox_end (n, 3, end exclusive) and `first` (raster index of the fragment's first voxel in the volume)."""
    local, count = cc3d.connected_components(
        np.ascontiguousarray(foreground, dtype=bool), connectivity=6, return_N=True, out_dtype=np.uint32
    )
    stats = fragment_statistics(local, count, begin, volume_shape)
    return local.astype(np.uint32), stats


def fragment_statistics(labels: np.ndarray, count: int, begin: np.ndarray, volume_shape) -> dict[str, np.ndarray]:
    """`block_fragments`' statistics of the labels 1..`count` of a block (0 = background) whose first voxel is
    `begin` in a volume of `volume_shape` (global voxel indices)."""
    flat = np.flatnonzero(labels)
    ids = labels.ravel()[flat]
    coords = [c + b for c, b in zip(np.unravel_index(flat, labels.shape), begin)]
    sums = [np.bincount(ids, weights=c, minlength=count + 1)[1:] for c in coords]
    moments = [np.bincount(ids, weights=coords[i] * coords[j], minlength=count + 1)[1:] for i, j in MOMENT_PAIRS]
    boxes = ndimage.find_objects(labels, max_label=count)
    starts = np.array([[s.start for s in box] for box in boxes], dtype=np.int64).reshape(count, 3)
    stops = np.array([[s.stop for s in box] for box in boxes], dtype=np.int64).reshape(count, 3)
    _, first = np.unique(ids, return_index=True)  # `flat` is in raster order: each label's first voxel
    return {
        "count": np.bincount(ids, minlength=count + 1)[1:].astype(np.int64),
        "sums": np.stack(sums, axis=1).reshape(count, 3),
        "moments": np.stack(moments, axis=1).reshape(count, 6),
        "bbox_begin": starts + begin,
        "bbox_end": stops + begin,
        "first": np.ravel_multi_index(tuple(c[first] for c in coords), volume_shape).astype(np.int64),
    }


def touching_pairs(last_plane: np.ndarray, next_plane: np.ndarray) -> np.ndarray:
    """Unique (id in `last_plane`, id in `next_plane`) pairs of face-adjacent foreground voxels of two planes."""
    both = (last_plane > 0) & (next_plane > 0)
    pairs = np.stack([last_plane[both], next_plane[both]], axis=1).astype(np.int64)
    return np.unique(pairs, axis=0) if len(pairs) else pairs.reshape(0, 2)


def boundary(local: np.ndarray) -> dict[str, np.ndarray]:
    """A block's first (`near_z`, ...) and last (`far_z`, ...) planes along each axis."""
    planes = {}
    for axis, name in enumerate("zyx"):
        planes[f"near_{name}"] = np.take(local, 0, axis=axis)
        planes[f"far_{name}"] = np.take(local, -1, axis=axis)
    return planes


def merge_fragments(
    fragments: list[dict], pairs: list[tuple[int, int, np.ndarray]]
) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """The fragments of all blocks united into objects: (lut, offsets, per-object statistics).

    `fragments[b]` are block b's statistics (blocks in raster order), `pairs` (block a, block b, (m, 2) local ids)
    the fragments that touch (the connected components of that graph are the objects). Provisional id = offsets[b]
    + local id; `lut[provisional]` (int64) is the global id, numbered by each object's first voxel in raster order
    (0 stays 0). Statistics, row i for object i + 1: voxel_count (int64), centroid (float64, mean voxel index),
    covariance (float64 (n, 3, 3), of the voxel indices), bbox_begin and bbox_end (int64, end exclusive)."""
    counts = np.array([len(f["count"]) for f in fragments], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(counts)])
    total = int(offsets[-1])
    edges = [offsets[a] + p[:, 0] - 1 for a, _, p in pairs], [offsets[b] + p[:, 1] - 1 for _, b, p in pairs]
    sources, targets = (np.concatenate(e) if e else np.zeros(0, np.int64) for e in edges)
    graph = sparse.coo_matrix((np.ones(len(sources), bool), (sources, targets)), shape=(total, total))
    objects, component = connected_components(graph, directed=False) if total else (0, np.zeros(0, np.int64))

    def stacked(key: str, width: int) -> np.ndarray:
        return np.concatenate([f[key] for f in fragments]).reshape(total, width) if total else np.zeros((0, width))

    first = np.full(objects, np.iinfo(np.int64).max)
    np.minimum.at(first, component, stacked("first", 1)[:, 0].astype(np.int64))
    global_id = np.empty(objects, np.int64)
    global_id[np.argsort(first)] = np.arange(1, objects + 1)
    index = global_id[component] - 1  # each fragment's object, 0-based

    def summed(values: np.ndarray) -> np.ndarray:
        return np.stack([np.bincount(index, weights=v, minlength=objects) for v in values.T], axis=1)

    voxel_count = np.bincount(index, weights=stacked("count", 1)[:, 0], minlength=objects).astype(np.int64)
    centroid = summed(stacked("sums", 3)) / np.maximum(voxel_count, 1)[:, None]
    second = summed(stacked("moments", 6)) / np.maximum(voxel_count, 1)[:, None]
    covariance = np.empty((objects, 3, 3))
    for k, (i, j) in enumerate(MOMENT_PAIRS):
        covariance[:, i, j] = covariance[:, j, i] = second[:, k] - centroid[:, i] * centroid[:, j]
    bbox_begin = np.full((objects, 3), np.iinfo(np.int64).max)
    bbox_end = np.zeros((objects, 3), np.int64)
    np.minimum.at(bbox_begin, index, stacked("bbox_begin", 3).astype(np.int64))
    np.maximum.at(bbox_end, index, stacked("bbox_end", 3).astype(np.int64))
    statistics = {
        "voxel_count": voxel_count,
        "centroid": centroid,
        "covariance": covariance,
        "bbox_begin": bbox_begin,
        "bbox_end": bbox_end,
    }
    return np.concatenate([[0], global_id[component]]).astype(np.int64), offsets, statistics
