"""The downsampling rules: means for images, most frequent values for labels."""

import numpy as np
import pytest

from incasem_like.ops.downsample import downsample, downsample_image, downsample_labels


def cells(data: np.ndarray, factor):
    """(index, cell) of every output voxel, by definition; `factor` one for all axes or (z, y, x)."""
    factors = (factor,) * 3 if isinstance(factor, int) else factor
    shape = tuple(-(-s // f) for s, f in zip(data.shape, factors))
    for index in np.ndindex(shape):
        yield index, data[tuple(slice(i * f, (i + 1) * f) for i, f in zip(index, factors))]


def out_shape(data: np.ndarray, factor) -> tuple[int, ...]:
    factors = (factor,) * 3 if isinstance(factor, int) else factor
    return tuple(-(-s // f) for s, f in zip(data.shape, factors))


def mean_reference(data: np.ndarray, factor) -> np.ndarray:
    out = np.zeros(out_shape(data, factor), data.dtype)
    for index, cell in cells(data, factor):
        out[index] = np.rint(cell.astype(np.float64).mean())
    return out


def mode_reference(data: np.ndarray, factor) -> np.ndarray:
    out = np.zeros(out_shape(data, factor), data.dtype)
    for index, cell in cells(data, factor):
        values, counts = np.unique(cell, return_counts=True)
        out[index] = values[counts == counts.max()].max()
    return out


@pytest.mark.parametrize("factor", [(1, 2, 2), (2, 3, 1), (3, 1, 2)])
def test_per_axis_factors_follow_the_definition(factor):
    data = np.random.default_rng(sum(factor)).integers(0, 3, (5, 7, 9)).astype(np.uint8)
    np.testing.assert_array_equal(downsample(data, factor, "image"), mean_reference(data, factor))
    np.testing.assert_array_equal(downsample(data, factor, "labels"), mode_reference(data, factor))


def cell_of(values, dtype=np.uint8) -> np.ndarray:
    return np.array(values, dtype=dtype).reshape(2, 2, 2)


def test_image_rule_is_the_mean_rounded_half_to_even_in_the_input_dtype():
    assert downsample_image(cell_of([0] * 4 + [1] * 4), 2).item() == 0  # 0.5: halves go to the even integer
    assert downsample_image(cell_of([1] * 4 + [2] * 4), 2).item() == 2  # 1.5
    assert downsample_image(cell_of([0] * 3 + [1] * 5), 2).item() == 1  # 0.625
    assert downsample_image(cell_of([0] * 5 + [1] * 3), 2).item() == 0  # 0.375
    assert downsample_image(cell_of([10, 11, 11, 11, 11, 11, 11, 11]), 2).item() == 11  # 10.875
    full = downsample_image(cell_of([65535] * 8, np.uint16), 2)
    assert full.dtype == np.uint16 and full.item() == 65535  # summed without overflow
    floats = downsample_image(cell_of([0.5] * 4 + [0.25] * 4, np.float32), 2)
    assert floats.dtype == np.float32 and floats.item() == 0.375


def test_odd_shapes_keep_partial_cells_averaging_the_voxels_that_exist():
    data = np.arange(27, dtype=np.uint8).reshape(3, 3, 3)
    out = downsample_image(data, 2)
    assert out.shape == (2, 2, 2)
    assert out[1, 1, 1] == 26  # the corner cell holds one voxel
    assert out[0, 0, 1] == (2 + 5 + 11 + 14) // 4  # x has one voxel left: 4 voxels, mean 8
    assert out[1, 0, 0] == (18 + 19 + 21 + 22) // 4  # z has one slice left: mean 20
    assert downsample_labels(np.array([[[3, 3, 7]]], np.uint8), 2).tolist() == [[[3, 7]]]
    assert downsample_image(np.full((1, 1, 5), 9, np.uint8), 3).tolist() == [[[9, 9]]]


def test_label_rule_is_the_most_frequent_value_with_ties_to_the_larger_id():
    assert downsample_labels(cell_of([0] * 4 + [1] * 4), 2).item() == 1  # half foreground stays foreground
    assert downsample_labels(cell_of([0] * 5 + [1] * 3), 2).item() == 0
    assert downsample_labels(cell_of([5, 5, 5, 7, 7, 7, 0, 0]), 2).item() == 7
    assert downsample_labels(cell_of([0, 0, 0, 3, 2, 4, 0, 9]), 2).item() == 0  # plurality, not any foreground
    big = downsample_labels(cell_of([2**40] * 4 + [3] * 4, np.uint64), 2)
    assert big.dtype == np.uint64 and big.item() == 2**40
    negative = downsample_labels(cell_of([-4, -4, -4, 0, 0, 1, 2, 3], np.int32), 2)
    assert negative.dtype == np.int32 and negative.item() == -4


@pytest.mark.parametrize("factor", [2, 3])
@pytest.mark.parametrize("shape", [(4, 6, 8), (5, 7, 3), (1, 1, 1), (7, 2, 5)])
def test_rules_match_brute_force(rng, factor, shape):
    image = rng.integers(0, 65536, size=shape, dtype=np.uint16)
    np.testing.assert_array_equal(downsample(image, factor, "image"), mean_reference(image, factor))
    for dtype in (np.uint8, np.uint32, np.int64):
        labels = rng.choice(np.array([0, 1, 2, 7, 200]), size=shape, p=[0.4, 0.3, 0.1, 0.1, 0.1]).astype(dtype)
        result = downsample(labels, factor, "labels")
        assert result.dtype == dtype
        np.testing.assert_array_equal(result, mode_reference(labels, factor))
        np.testing.assert_array_equal(downsample(labels, factor, "mask"), result)
