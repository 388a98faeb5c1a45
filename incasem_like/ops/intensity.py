"""Intensity statistics and the linear rescale of float or wide-integer images to uint8/uint16.

Percentiles come from a histogram accumulated slab by slab (`Histogram`): integer data of up to 16 bits are counted
exactly, one bin per value; other data (float32, wider integers) in `FLOAT_BINS` equal bins between the volume's
minimum and maximum, so a percentile is exact to (max - min) / 65536 whatever the slab or thread order.

>>> histogram = Histogram.for_range(np.dtype(np.float32), 0.0, 100.0)
>>> histogram.add(np.arange(101, dtype=np.float32))
>>> [round(value, 2) for value in histogram.percentiles((1, 99))]
[1.0, 99.0]
>>> rescale(np.array([-1.0, 0.0, 50.0, 100.0, 200.0], np.float32), 0.0, 100.0, np.dtype(np.uint8))
array([  0,   0, 127, 255, 255], dtype=uint8)
"""

from dataclasses import dataclass

import numpy as np

#: bins of the histogram of float (and wider than 16-bit integer) data
FLOAT_BINS = 2**16


@dataclass
class Histogram:
    """Counts of values in `bins` equal bins from `low` (bin 0 starts there) to `high` (the last bin ends there)."""

    low: float
    high: float
    counts: np.ndarray  # int64 (bins,)
    exact_integers: bool

    @classmethod
    def for_range(cls, dtype: np.dtype, minimum: float, maximum: float) -> "Histogram":
        """A histogram for data of `dtype` between `minimum` and `maximum` (the volume's)."""
        if dtype.kind in "iu" and dtype.itemsize <= 2:
            low, high = int(minimum), int(maximum)
            return cls(low, high + 1, np.zeros(high - low + 1, np.int64), True)
        return cls(float(minimum), float(maximum), np.zeros(FLOAT_BINS, np.int64), False)

    def add(self, data: np.ndarray) -> None:
        """Count `data` (values outside [low, high] go to the end bins)."""
        if self.exact_integers:
            self.counts += np.bincount((data.ravel().astype(np.int64) - int(self.low)), minlength=len(self.counts))
            return
        bins, span = len(self.counts), self.high - self.low
        scaled = (data.ravel().astype(np.float64) - self.low) * (bins / span if span else 0.0)
        self.counts += np.bincount(np.clip(scaled.astype(np.int64), 0, bins - 1), minlength=bins)

    def merge(self, other: "Histogram") -> None:
        self.counts += other.counts

    def percentiles(self, percentiles: tuple[float, ...]) -> list[float]:
        """The values below which `percentiles` (0-100) of the counted voxels lie: for exact integers the value
        itself, else the start of the bin where the cumulative count reaches it."""
        cumulative = np.cumsum(self.counts)
        width = (self.high - self.low) / len(self.counts)
        found = []
        for percentile in percentiles:
            rank = percentile / 100 * cumulative[-1]
            index = int(min(np.searchsorted(cumulative, rank, side="left"), len(self.counts) - 1))
            found.append(float(self.low + index * width) if not self.exact_integers else float(self.low + index))
        return found


def rescale(data: np.ndarray, low: float, high: float, dtype: np.dtype) -> np.ndarray:
    """`data` mapped linearly so that `low` -> 0 and `high` -> the largest value of the unsigned integer `dtype`,
    clipped, rounded to the nearest integer (float64 arithmetic: the same result in any block)."""
    top = np.iinfo(dtype).max
    scaled = (data.astype(np.float64) - low) * (top / (high - low))
    return np.clip(np.rint(scaled), 0, top).astype(dtype)
