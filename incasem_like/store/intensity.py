"""Intensity statistics of a stored volume: percentiles of a whole dataset (or a ROI of it), read slab by slab."""

import os
from concurrent.futures import ThreadPoolExecutor
from typing import Annotated

import numpy as np
from pydantic import Field

from incasem_like.core.errors import UserError
from incasem_like.core.geometry import Roi
from incasem_like.ops.intensity import Histogram
from incasem_like.store.datasets import Volume

#: a percentile, 0-100
Percent = Annotated[float, Field(ge=0, le=100)]
#: an image value given by the user
Intensity = Annotated[float, Field(ge=-1e30, le=1e30)]
#: threads reading slabs for the statistics
STATISTICS_THREADS = min(8, os.cpu_count() or 1)


def intensity_percentiles(volume: Volume, roi: Roi, percentiles: tuple[float, float]) -> tuple[float, float]:
    """`percentiles` of `volume` in `roi` (see `Histogram`), read in chunk-deep z slabs by a few threads: one pass
    for the minimum and maximum, one for the histogram. NaN or infinity is a `UserError` naming the dataset."""
    depth = volume.chunk_shape[0] * volume.voxel_size[0]
    slabs = [
        roi.intersect(Roi((z, *roi.offset[1:]), (depth, *roi.shape[1:])))
        for z in range(roi.begin[0], roi.end[0], depth)
    ]

    def extremes(slab: Roi) -> tuple[float, float]:
        data = volume[slab]
        if data.dtype.kind == "f" and not np.isfinite(data).all():
            z = (slab.begin[0] - volume.offset[0]) // volume.voxel_size[0]
            raise UserError(
                f"{volume.name}: NaN or infinity in the data (in slices {z}..{z + len(data) - 1}); replace them "
                "before rescaling"
            )
        return float(data.min()), float(data.max())

    with ThreadPoolExecutor(STATISTICS_THREADS) as pool:
        lows, highs = zip(*pool.map(extremes, slabs))
        histogram = Histogram.for_range(volume.dtype, min(lows), max(highs))

        def counted(slab: Roi) -> Histogram:
            part = Histogram(histogram.low, histogram.high, np.zeros_like(histogram.counts), histogram.exact_integers)
            part.add(volume[slab])
            return part

        for part in pool.map(counted, slabs):
            histogram.merge(part)
    low, high = histogram.percentiles(percentiles)
    return low, high
