"""Downsampling by integer factors, the same along every axis or one per axis (z, y, x; e.g. 1 2 2 for anisotropic
sections): the mean of each cell for images, the most frequent value for labels and masks (ties to the larger
value). Images are uint8, uint16 or float32 and keep their dtype (integer means
rounded half to even); labels any integer dtype. A cell past the far border that the array covers only in part
takes the voxels that exist.

>>> downsample_image(np.array([[[1, 2], [3, 5]]], np.uint8), 2).tolist()
[[[3]]]
>>> downsample_labels(np.array([[[1, 1], [2, 2]], [[0, 0], [0, 0]]], np.uint8), 2).tolist()
[[[0]]]
>>> downsample_image(np.arange(8, dtype=np.uint8).reshape(2, 2, 2), (1, 2, 2)).tolist()
[[[2]], [[6]]]
"""

import math
from typing import Any

import numpy as np

from incasem_like.core.geometry import per_axis

#: one factor for every axis, or (z, y, x) factors
Factors = int | tuple[int, int, int]


def output_shape(shape: tuple[int, ...], factor: Factors) -> tuple[int, ...]:
    """ceil(shape / factor): partial cells at the far border are kept."""
    return tuple(-(-int(s) // f) for s, f in zip(shape, per_axis(factor)))


def downsample(data: np.ndarray, factor: Factors, kind: str) -> np.ndarray:
    """Downsample a 3D block by `factor`: mean for images, most frequent value for labels/masks."""
    if min(per_axis(factor)) < 1:
        raise ValueError(f"factor {factor} must be at least 1")
    return downsample_image(data, factor) if kind == "image" else downsample_labels(data, factor)


def downsample_image(data: np.ndarray, factor: Factors) -> np.ndarray:
    """Mean of each cell (of the voxels that exist, at the far border), in `data`'s dtype.

    Integers are rounded to the nearest integer, halves to the even one (as `np.rint`, so no level drifts
    brighter), in exact integer arithmetic; floats are averaged in float64.
    """
    integer = np.issubdtype(data.dtype, np.integer)
    accumulate = np.float64 if not integer else np.int64 if np.issubdtype(data.dtype, np.signedinteger) else np.uint64
    sums = _cell_sums(data, factor, accumulate)
    counts = _cell_counts(data.shape, factor)
    if integer:
        quotient = sums // counts
        twice_remainder = 2 * (sums - quotient * counts)
        up = (twice_remainder > counts) | ((twice_remainder == counts) & (quotient % 2 == 1))
        return (quotient + up).astype(data.dtype)
    return (sums / counts).astype(data.dtype)


def downsample_labels(data: np.ndarray, factor: Factors) -> np.ndarray:
    """Most frequent value of each cell (of the voxels that exist); ties go to the larger value."""
    out_shape = output_shape(data.shape, factor)
    if set(per_axis(factor)) <= {1, 2}:
        # a partial cell lacks exactly one of two slices along an axis: repeating the last slice doubles every
        # count in the cell, which changes neither its most frequent value nor its ties
        return _mode(_cells(_pad(data, factor, mode="edge"), factor), None).reshape(out_shape)
    padded, weights = _pad(data, factor), None
    if padded.shape != data.shape:
        weights = _cells(_pad(np.ones(data.shape, np.uint32), factor), factor)
    return _mode(_cells(padded, factor), weights).reshape(out_shape)


def _pad(data: np.ndarray, factor: Factors, mode: Any = "constant") -> np.ndarray:
    """`data` padded (zeros, or `mode`) at the far end of each axis to a multiple of its factor (itself if one)."""
    extra = [(0, -s % f) for s, f in zip(data.shape, per_axis(factor))]
    return np.pad(data, extra, mode=mode) if any(e for _, e in extra) else data


def _cell_sums(data: np.ndarray, factor: Factors, dtype) -> np.ndarray:
    """Sum of each cell in `dtype` (missing voxels of partial cells count as 0), one axis at a time."""
    sums = _pad(data, factor)
    for axis, f in enumerate(per_axis(factor)):
        parts = [sums[(slice(None),) * axis + (slice(i, None, f),)] for i in range(f)]
        total = parts[0].astype(dtype)
        for part in parts[1:]:
            total += part
        sums = total
    return sums


def _cell_counts(shape: tuple[int, ...], factor: Factors) -> np.ndarray | int:
    """How many voxels of the input each output voxel's cell holds: the cell's size, less in partial border
    cells."""
    factors = per_axis(factor)
    if all(s % f == 0 for s, f in zip(shape, factors)):
        return math.prod(factors)
    counts = [np.minimum(f, s - np.arange(0, s, f)) for s, f in zip(shape, factors)]
    return math.prod(np.ix_(*counts))


def _cells(data: np.ndarray, factor: Factors) -> np.ndarray:
    """(cells, cell size) matrix of a 3D array whose shape is a multiple of the factors, cells in C order."""
    fz, fy, fx = per_axis(factor)
    nz, ny, nx = (s // f for s, f in zip(data.shape, (fz, fy, fx)))
    blocks = data.reshape(nz, fz, ny, fy, nx, fx).transpose(0, 2, 4, 1, 3, 5)
    return blocks.reshape(nz * ny * nx, fz * fy * fx)


def _mode(cells: np.ndarray, weights: np.ndarray | None) -> np.ndarray:
    """Most frequent value of each row (entries counted with `weights`, 1 if None); ties to the larger value.

    Each row is sorted, then scanned left to right (one vectorized step per column): `count` is the weight of the
    current run of equal values so far, and the best value is replaced whenever a run's count reaches the best
    count, so among equally frequent values the last, largest one wins.
    """
    if weights is None:
        values = np.sort(cells, axis=1).T.copy()
    else:
        order = np.argsort(cells, axis=1)
        values = np.take_along_axis(cells, order, axis=1).T.copy()
        weights = np.take_along_axis(weights, order, axis=1).T.copy()
    count = weights[0].copy() if weights is not None else np.ones(len(values[0]), np.uint32)
    best_value, best_count = values[0].copy(), count.copy()
    for j in range(1, len(values)):
        count = np.where(values[j] == values[j - 1], count, 0) + (weights[j] if weights is not None else 1)
        better = count >= best_count
        best_value[better] = values[j][better]
        np.maximum(count, best_count, out=best_count)
    return best_value
