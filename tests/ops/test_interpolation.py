import numpy as np
import pytest

from incasem_like.ops import interpolation
from incasem_like.ops.interpolation import interpolate_gap, shape_prior


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2 * float((a & b).sum()) / float(a.sum() + b.sum())


def fill(raw: np.ndarray, truth: np.ndarray, step: int, **options) -> tuple[np.ndarray, np.ndarray]:
    """Every gap of `step` slices filled from the annotated slices 0, step, ... (the ends of `truth`)."""
    labels, sure = truth.astype(np.uint8), np.ones(truth.shape, np.uint8)
    for a in range(0, len(truth) - step, step):
        b = a + step
        labels[a + 1 : b], sure[a + 1 : b] = interpolate_gap(raw[a : b + 1], truth[a], truth[b], **options)
    return labels.astype(bool), sure.astype(bool)


@pytest.fixture
def ball():
    """A noisy dark ball of radius 12 in a bright background, centred between annotated slices."""
    z, y, x = np.ogrid[:31, :40, :40]
    truth = (z - 15) ** 2 + (y - 20) ** 2 + (x - 19) ** 2 < 12**2
    noise = np.random.default_rng(0).normal(0, 15, truth.shape)
    return np.clip(np.where(truth, 70, 180) + noise, 0, 255).astype(np.uint8), truth


@pytest.mark.parametrize("method", ["random-walker", "shape"])
def test_a_ball_annotated_every_fifth_slice_comes_back(ball, method):
    raw, truth = ball
    labels, sure = fill(raw, truth, 5, method=method)
    between = np.ones(len(truth), bool)
    between[::5] = False
    assert dice(labels[between], truth[between]) > 0.95
    assert sure[between].mean() > 0.7


def test_the_walker_follows_the_image_where_the_shape_does_not(ball):
    """A ball annotated every 10th slice: its caps are not linear in z, the walker finds them in the image."""
    raw, truth = ball
    between = np.ones(len(truth), bool)
    between[::10] = False
    walker, shape = fill(raw, truth, 10)[0], fill(raw, truth, 10, method="shape")[0]
    assert dice(walker[between], truth[between]) > dice(shape[between], truth[between]) + 0.02


def test_an_object_on_one_annotated_slice_only_ends_within_the_gap():
    first = np.zeros((30, 30), bool)
    first[10:20, 10:20] = True
    raw = np.full((11, 30, 30), 128, np.uint8)
    labels, sure = interpolate_gap(raw, first, np.zeros_like(first))
    areas = labels.sum(axis=(1, 2))
    assert areas[0] > 0 and areas[-1] == 0
    assert (np.diff(areas.astype(int)) <= 0).all()
    assert labels.dtype == sure.dtype == np.uint8


def test_empty_slices_give_empty_sure_labels():
    raw = np.random.default_rng(1).integers(0, 255, (9, 16, 16), dtype=np.uint8)
    empty = np.zeros((16, 16), bool)
    labels, sure = interpolate_gap(raw, empty, empty)
    assert labels.shape == (7, 16, 16) and not labels.any() and sure.all()


def test_adjacent_annotated_slices_leave_nothing_to_fill():
    labels, sure = interpolate_gap(np.zeros((2, 4, 4), np.uint8), np.ones((4, 4), bool), np.ones((4, 4), bool))
    assert labels.shape == sure.shape == (0, 4, 4)


def test_a_walker_that_does_not_converge_leaves_the_shape_and_an_unsure_band(ball, monkeypatch):
    raw, truth = ball
    monkeypatch.setattr(interpolation, "MAX_ITERATIONS", 1)
    labels, sure = interpolate_gap(raw[5:16], truth[5], truth[15])
    shape_labels, shape_sure = interpolate_gap(raw[5:16], truth[5], truth[15], method="shape")
    np.testing.assert_array_equal(labels, shape_labels)
    np.testing.assert_array_equal(sure, shape_sure)
    assert not sure.all()


def test_the_prior_is_clipped_so_distances_of_far_objects_do_not_dominate():
    far = np.zeros((1, 200), bool)
    far[0, 190:] = True
    prior = shape_prior(far, np.zeros_like(far), 4)
    assert prior.max() == 4 and prior.dtype == np.float32
