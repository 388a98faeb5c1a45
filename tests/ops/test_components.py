"""Per-block fragments, their statistics and the pairs that touch across block faces."""

import numpy as np

from incasem_like.ops.components import block_fragments, touching_pairs


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
