"""Per-block fragments, their statistics and the pairs that touch across block faces."""

import numpy as np
import pytest
from scipy import ndimage

from incasem_like.ops.components import block_fragments, touching_pairs
from incasem_like.ops.morphology import FACE_CONNECTIVITY


def test_block_fragments_statistics_are_global_voxel_sums():
    block = np.zeros((4, 5, 6), bool)
    block[0, 0, 1:3] = block[2:4, 3, 5] = True
    local, stats = block_fragments(block, np.array([10, 20, 30]), (100, 100, 100))
    assert local.dtype == np.uint32 and local.max() == 2
    np.testing.assert_array_equal(stats["count"], [2, 2])
    np.testing.assert_array_equal(stats["sums"], [[20, 40, 63], [25, 46, 70]])
    np.testing.assert_array_equal(stats["bbox_begin"], [[10, 20, 31], [12, 23, 35]])
    np.testing.assert_array_equal(stats["bbox_end"], [[11, 21, 33], [14, 24, 36]])
    np.testing.assert_array_equal(stats["first"], [10 * 10000 + 20 * 100 + 31, 12 * 10000 + 23 * 100 + 35])
    assert stats["moments"][1].tolist() == [12**2 + 13**2, 23 * 25, 35 * 25, 2 * 23**2, 2 * 23 * 35, 2 * 35**2]


def test_touching_pairs_are_unique_face_neighbours():
    last = np.array([[1, 1, 0], [2, 0, 3]])
    following = np.array([[4, 5, 6], [4, 4, 0]])
    assert touching_pairs(last, following).tolist() == [[1, 4], [1, 5], [2, 4]]
    assert touching_pairs(last, np.zeros_like(last)).shape == (0, 2)


@pytest.mark.parametrize("order", ["C", "F", "view"])
def test_block_fragments_are_numbered_like_one_scipy_label_call(order):
    """cc3d labels the block: its ids equal scipy's (raster order of each fragment's first voxel) for any layout."""
    rng = np.random.default_rng(7)
    for shape in [(1, 1, 1), (1, 7, 1), (9, 11, 13), (20, 24, 28)]:
        volume = rng.random(shape) < 0.4
        block = {"C": volume, "F": np.asfortranarray(volume), "view": np.pad(volume, 1)[1:-1, 1:-1, 1:-1]}[order]
        local, stats = block_fragments(block, np.zeros(3, np.int64), shape)
        expected, count = ndimage.label(volume, structure=FACE_CONNECTIVITY)
        np.testing.assert_array_equal(local, expected)
        assert local.dtype == np.uint32 and len(stats["count"]) == count
    local, stats = block_fragments(np.zeros((3, 4, 5), bool), np.zeros(3, np.int64), (3, 4, 5))
    assert not local.any() and stats["count"].shape == (0,) and stats["bbox_begin"].shape == (0, 3)
