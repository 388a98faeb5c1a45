import doctest
import random

import gunpowder as gp
import numpy as np
from gunpowder.ext import augment

from incasem_like.training import elastic
from incasem_like.training.elastic import ElasticAugment, upsampled


def test_doctests():
    result = doctest.testmod(elastic)
    assert result.attempted > 0 and result.failed == 0


def test_upsampling_is_scipy_zooms_linear_upsampling():
    field = np.random.default_rng(0).normal(size=(3, 5, 1, 7)).astype(np.float32) * 50
    for shape in ((17, 23, 30), (5, 4, 7), (20, 1, 13)):
        np.testing.assert_allclose(upsampled(field, shape), augment.upscale_transformation(field, shape), atol=1e-4)


def deformation(node: gp.ElasticAugment, shape: tuple[int, ...], seed: int) -> np.ndarray:
    random.seed(seed)
    np.random.seed(seed)
    return node._ElasticAugment__create_transformation(shape)


def test_the_deformation_is_gunpowders_for_the_same_seed_without_its_zoom(monkeypatch):
    """The same field as gunpowder's ElasticAugment (jitter, rotation), to float32 rounding; gunpowder's final
    upsampling is not called."""
    arguments = {"control_point_spacing": (8, 8, 8), "jitter_sigma": (2, 2, 2), "rotation_interval": (0, np.pi / 2)}
    ours = ElasticAugment(**arguments, subsample=4, spatial_dims=3, p=1.0)
    theirs = gp.ElasticAugment(**arguments, subsample=4, spatial_dims=3, p=1.0)
    shape = (24, 40, 36)
    expected = [deformation(theirs, shape, seed) for seed in (1, 2)]

    def refused(*args, **kwargs):
        raise AssertionError("gunpowder's upsampling was called")

    monkeypatch.setattr(augment, "upscale_transformation", refused)
    fields = [deformation(ours, shape, seed) for seed in (1, 2)]
    for field, reference in zip(fields, expected):
        assert field.shape == (3, *shape) and field.dtype == np.float32
        np.testing.assert_allclose(field, reference, atol=1e-4)
    assert np.abs(fields[0] - fields[1]).max() > 1  # the seeds draw different deformations
