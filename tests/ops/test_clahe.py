"""CLAHE's histogram functions and blockwise arithmetic against skimage."""

import numpy as np
from skimage.exposure import _adapthist, rescale_intensity
from skimage.exposure._adapthist import NR_OF_GRAY, _clahe
from skimage.util import img_as_uint

from incasem_like.ops import clahe
from incasem_like.ops.clahe import clahe_block, clip_histogram, map_histogram, needed_range, to_uint8
from tests.stages.test_clahe import sample_raw


def skimage_levels_as_uint8(volume: np.ndarray, kernel: int) -> np.ndarray:
    """skimage's CLAHE before its final per-call stretch, on the same 0..16383 scale as ours."""
    scaled = np.round(rescale_intensity(img_as_uint(volume), out_range=(0, NR_OF_GRAY - 1))).astype(np.uint16)
    return to_uint8()[_clahe(scaled, [kernel] * 3, 0.02, 256)]


def blockwise(volume: np.ndarray, block, kernel: int) -> np.ndarray:
    """`clahe_block` over a grid of (odd) block shapes, each given only the data it needs."""
    result = np.zeros_like(volume)
    for begin in np.ndindex(*(-(-s // b) for s, b in zip(volume.shape, block))):
        begin = tuple(i * b for i, b in zip(begin, block))
        end = tuple(min(b + n, s) for b, n, s in zip(begin, block, volume.shape))
        lo, hi = zip(*(needed_range(b, e, s, kernel) for b, e, s in zip(begin, end, volume.shape)))
        data = volume[tuple(slice(a, z) for a, z in zip(lo, hi))]
        inner = tuple(slice(b, e) for b, e in zip(begin, end))
        result[inner] = clahe_block(data, lo, begin, end, volume.shape, (kernel,) * 3, 0.02, 256)
    return result


def test_own_histogram_clipping_and_mapping_equal_skimages():
    """The two functions taken over from skimage's private module give its results count for count."""
    rng = np.random.default_rng(0)
    assert clahe.NR_OF_GRAY == NR_OF_GRAY
    for _ in range(200):
        bins = int(rng.choice([4, 17, 256]))
        histogram = rng.geometric(rng.uniform(0.001, 0.5), size=bins).astype(np.int64) - 1
        histogram[rng.integers(bins)] += int(rng.integers(0, 5000))  # a peak to clip
        limit = int(rng.integers(1, max(2, histogram.max())))
        clipped = clip_histogram(histogram.copy(), limit)
        np.testing.assert_array_equal(clipped, _adapthist.clip_histogram(histogram.copy(), limit))
        elements = int(histogram.sum()) or 1
        np.testing.assert_array_equal(
            map_histogram(clipped, 0, NR_OF_GRAY - 1, elements),
            _adapthist.map_histogram(clipped, 0, NR_OF_GRAY - 1, elements),
        )


def test_equals_skimage_arithmetic_exactly_and_does_not_depend_on_blocks():
    volume = sample_raw((37, 70, 90))
    whole = clahe_block(volume, (0, 0, 0), (0, 0, 0), volume.shape, volume.shape, (16, 16, 16), 0.02, 256)
    np.testing.assert_array_equal(whole, skimage_levels_as_uint8(volume, 16))
    np.testing.assert_array_equal(blockwise(volume, (13, 17, 19), 16), whole)
    np.testing.assert_array_equal(blockwise(volume, (37, 9, 40), 16), whole)
