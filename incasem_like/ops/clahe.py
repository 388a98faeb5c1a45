"""3D contrast-limited adaptive histogram equalization (CLAHE) of uint8 volumes, in pieces that agree exactly.

The result equals `skimage.exposure.equalize_adapthist` run once over the whole volume, however the volume is cut
into blocks. A plain per-block call cannot give that, for three reasons, each handled here:

- intensity range: skimage stretches each call's input from its own min..max (and its output again). Here the
  input range is fixed for the whole run (by default the dtype's 0..255; `intensity_range` may give the volume's
  min..max to reproduce a single skimage call) and the output range is CLAHE's full 0..16383. skimage's output
  stretch is where the two still differ (by a gray level or two, measured in the tests);
- tile grid: skimage anchors its contextual regions (tiles of `kernel` voxels) at the corner of whatever array it
  is given and reflects the volume at the far end. Here tiles are anchored at the corner of the whole dataset,
  with skimage's reflection at the dataset's far end, whatever the block;
- context: a voxel's value interpolates the mappings of the 8 nearest tiles, so a block needs the whole tiles
  around it: up to one and a half kernels of context on each side (`needed_range`; the grid is not
  block-aligned).

Within that definition the computation follows skimage's arithmetic step by step (same binning, the same clipping
and mapping functions, float32 accumulation in the same order), so blockwise and single-pass results agree
exactly. Tile histograms count raw uint8 values (folded into bins afterwards) and the interpolation runs one cell
of constant surrounding tiles at a time into reused buffers, so a block needs little more memory than its input:
~750 MB per worker at the default block of 512^3 (+ up to 192 voxels of context per side).

uint8 in (any shape (z, y, x)), uint8 out; tile mappings and interpolation weights float64, accumulation float32.
"""

import itertools
import math
from collections.abc import Sequence
from functools import cache

import numpy as np
from skimage.exposure import rescale_intensity
from skimage.util import img_as_ubyte, img_as_uint

#: z slices interpolated at a time within one cell (temporaries of SLAB x cell y x cell x float64 stay in cache)
SLAB = 16
#: gray levels of skimage's CLAHE (its `NR_OF_GRAY`): images are rescaled to 0..2^14-1 before binning
NR_OF_GRAY = 2**14


@cache
def gray_bins(nbins: int, low: int = 0, high: int = 255) -> np.ndarray:
    """uint8 value -> histogram bin, as skimage bins a uint8 image whose values span low..high."""
    values = img_as_uint(np.arange(256, dtype=np.uint8))
    in_range = (low * 257, high * 257)  # img_as_uint maps uint8 v to v * 257
    scaled = np.round(rescale_intensity(values, in_range=in_range, out_range=(0, NR_OF_GRAY - 1)))
    bins = scaled.astype(np.min_scalar_type(NR_OF_GRAY)) // (1 + NR_OF_GRAY // nbins)
    return bins.astype(np.uint8 if nbins <= 256 else np.uint16)


@cache
def to_uint8() -> np.ndarray:
    """CLAHE level (0..NR_OF_GRAY-1) -> uint8, over CLAHE's full output range."""
    levels = np.arange(NR_OF_GRAY, dtype=np.float64)
    return img_as_ubyte(rescale_intensity(levels, in_range=(0, NR_OF_GRAY - 1), out_range=(0.0, 1.0)))


def clip_histogram(histogram: np.ndarray, limit: int) -> np.ndarray:
    """int64 bin counts clipped at `limit`, the clipped counts handed back out over the bins below it: evenly,
    then one at a time at strides across the bins (skimage's redistribution, count for count). Modifies and
    returns `histogram`.

    >>> clip_histogram(np.array([10, 0, 0, 2]), 4).tolist()
    [4, 2, 2, 4]
    """
    clipped = histogram > limit
    excess = int(histogram[clipped].sum()) - int(clipped.sum()) * limit
    histogram[clipped] = limit
    each = excess // histogram.size
    low = histogram < limit - each
    excess -= int(low.sum()) * each
    histogram[low] += each
    topped = (histogram >= limit - each) & (histogram < limit)
    excess += int(histogram[topped].sum()) - int(topped.sum()) * limit
    histogram[topped] = limit
    while excess > 0:
        before = excess
        for start in range(histogram.size):
            stride = max(1, int(np.count_nonzero(histogram < limit)) // excess)
            under = histogram[start::stride] < limit
            histogram[start::stride][under] += 1
            excess -= int(np.count_nonzero(under))
            if excess <= 0:
                break
        if excess == before:
            break
    return histogram


def map_histogram(histogram: np.ndarray, low: int, high: int, elements: int) -> np.ndarray:
    """Bin counts of `elements` values -> the equalizing lookup table (int64, low..high): the cumulative counts
    scaled to the range, as skimage truncates them.

    >>> map_histogram(np.array([1, 1, 2]), 0, 100, 4).tolist()
    [25, 50, 100]
    """
    table = np.cumsum(histogram, axis=-1).astype(np.float64)
    table *= (high - low) / elements
    table += low
    np.clip(table, None, high, out=table)
    return table.astype(np.int64)


def tile_mapping(tile_values: np.ndarray, value_bins: np.ndarray, clip_limit: float, nbins: int) -> np.ndarray:
    """skimage's clipped, equalizing gray-level mapping of one contextual region of uint8 values (one per bin).

    The bin histogram is the 256-value histogram folded through `value_bins` (uint8 value -> bin): the same
    counts as binning every voxel first, for a fraction of the memory traffic.
    """
    elements = tile_values.size
    limit = int(np.clip(clip_limit * elements, 1, None)) if clip_limit > 0 else elements
    histogram = np.bincount(value_bins, weights=np.bincount(tile_values.ravel(), minlength=256), minlength=nbins)
    histogram = clip_histogram(histogram.astype(np.int64), limit)
    return map_histogram(histogram, 0, NR_OF_GRAY - 1, elements)


def padded_index(size: int, kernel: int) -> np.ndarray:
    """Volume index of each position of skimage's padded axis (half a kernel before, reflected at both ends)."""
    pad_end = (kernel - size % kernel) % kernel + math.ceil(kernel / 2)
    return np.pad(np.arange(size), (kernel // 2, pad_end), mode="reflect")


def needed_range(begin: int, end: int, size: int, kernel: int) -> tuple[int, int]:
    """Volume indices [lo, hi) along one axis that the output voxels begin..end-1 depend on."""
    tiles = _tiles_for(np.arange(begin, end), size, kernel)
    index = padded_index(size, kernel)
    used = index[kernel // 2 + tiles[0].min() * kernel : kernel // 2 + (tiles[1].max() + 1) * kernel]
    return int(min(used.min(), begin)), int(max(used.max() + 1, end))


def _tiles_for(positions: np.ndarray, size: int, kernel: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For voxel indices along one axis: the lower and upper tile and the weight of the upper one."""
    shifted = positions + kernel // 2
    tile_count = -(-size // kernel)
    upper = shifted // kernel
    weight = (shifted % kernel) / kernel
    return np.clip(upper - 1, 0, tile_count - 1), np.clip(upper, 0, tile_count - 1), weight


def _cells(lower: np.ndarray, upper: np.ndarray) -> list[tuple[int, int]]:
    """[begin, end) runs of positions along one axis that interpolate between the same two tiles."""
    cuts = np.flatnonzero((np.diff(lower) != 0) | (np.diff(upper) != 0)) + 1
    bounds = [0, *cuts.tolist(), len(lower)]
    return list(zip(bounds[:-1], bounds[1:]))


def clahe_block(
    data: np.ndarray,
    data_begin: Sequence[int],
    write_begin: Sequence[int],
    write_end: Sequence[int],
    volume_shape: Sequence[int],
    kernel: Sequence[int],
    clip_limit: float,
    nbins: int,
    intensity_range: tuple[int, int] = (0, 255),
) -> np.ndarray:
    """CLAHE of the voxels write_begin..write_end (volume indices, z y x) of a uint8 volume -> uint8.

    `data` holds the volume's voxels from `data_begin` on and must cover `needed_range` along every axis.
    `intensity_range` is the input range stretched over CLAHE's levels (skimage uses each call's min..max).
    """
    if data.dtype != np.uint8:
        raise TypeError(f"clahe_block needs uint8 data, got {data.dtype}")
    value_bins = gray_bins(nbins, *intensity_range)
    axes = [_tiles_for(np.arange(b, e), s, k) for b, e, s, k in zip(write_begin, write_end, volume_shape, kernel)]
    first = [lower.min() for lower, _, _ in axes]
    counts = [upper.max() - f + 1 for (_, upper, _), f in zip(axes, first)]
    local = [padded_index(s, k) - b for s, k, b in zip(volume_shape, kernel, data_begin)]

    # mapped levels are integers < 2**14, exact in float64: interpolation then multiplies without conversions
    mappings = np.empty((*counts, nbins), dtype=np.float64)
    for tile in np.ndindex(*counts):
        index = [
            loc[k // 2 + (f + t) * k : k // 2 + (f + t + 1) * k] for loc, k, f, t in zip(local, kernel, first, tile)
        ]
        contiguous = all(np.array_equal(i, np.arange(i[0], i[0] + len(i))) for i in index)
        region = data[tuple(slice(i[0], i[-1] + 1) for i in index)] if contiguous else data[np.ix_(*index)]
        mappings[tile] = tile_mapping(region, value_bins, clip_limit, nbins)

    (z_lo, z_hi, z_w), (y_lo, y_hi, y_w), (x_lo, x_hi, x_w) = [
        (lower - f, upper - f, weight) for (lower, upper, weight), f in zip(axes, first)
    ]
    inner = tuple(slice(b - d, e - d) for b, e, d in zip(write_begin, write_end, data_begin))
    write_bins = value_bins[data[inner]]
    result = np.empty(write_bins.shape, dtype=np.uint8)
    # one cell (constant 8 surrounding tiles) and SLAB z slices at a time, into buffers reused throughout
    y_cells, x_cells = _cells(y_lo, y_hi), _cells(x_lo, x_hi)
    plane = max(b - a for a, b in y_cells) * max(b - a for a, b in x_cells)
    mapped, weight, accumulated = np.empty(SLAB * plane), np.empty(SLAB * plane), np.empty(SLAB * plane, np.float32)
    weight_yx, mapped32 = np.empty(plane), np.empty(SLAB * plane, np.float32)
    for (ya, yb), (xa, xb), (za, zb) in itertools.product(y_cells, x_cells, _cells(z_lo, z_hi)):
        for z0 in range(za, zb, SLAB):
            z1 = min(z0 + SLAB, zb)
            shape = (z1 - z0, yb - ya, xb - xa)
            size = math.prod(shape)
            cell = write_bins[z0:z1, ya:yb, xa:xb]
            views = [buffer[:size].reshape(shape) for buffer in (mapped, weight, accumulated, mapped32)]
            cell_mapped, cell_weight, cell_sum, cell_mapped32 = views
            cell_weight_yx = weight_yx[: shape[1] * shape[2]].reshape(shape[1:])
            cell_sum[...] = 0
            # skimage's edge order (z, y, x bits), weight product order (x * y) * z and float32 accumulation
            for ez, ey, ex in np.ndindex(2, 2, 2):
                tz, wz = (z_hi[z0], z_w[z0:z1]) if ez else (z_lo[z0], 1 - z_w[z0:z1])
                ty, wy = (y_hi[ya], y_w[ya:yb]) if ey else (y_lo[ya], 1 - y_w[ya:yb])
                tx, wx = (x_hi[xa], x_w[xa:xb]) if ex else (x_lo[xa], 1 - x_w[xa:xb])
                np.take(mappings[tz, ty, tx], cell, out=cell_mapped)
                np.multiply(wx[None, :], wy[:, None], out=cell_weight_yx)
                np.multiply(cell_weight_yx[None], wz[:, None, None], out=cell_weight)
                np.multiply(cell_mapped, cell_weight, out=cell_mapped)
                np.copyto(cell_mapped32, cell_mapped, casting="same_kind")
                np.add(cell_sum, cell_mapped32, out=cell_sum)
            result[z0:z1, ya:yb, xa:xb] = to_uint8()[cell_sum.astype(np.uint16)]
    return result
