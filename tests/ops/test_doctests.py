"""The examples in the docstrings of the pure functions hold."""

import doctest
import importlib
import pkgutil

import pytest

import incasem_like.ops

MODULES = [module.name for module in pkgutil.iter_modules(incasem_like.ops.__path__)]


def test_every_module_shows_an_example():
    assert {"clahe", "components", "downsample", "interpolation", "metrics", "morphology", "surfaces"} <= set(MODULES)


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    result = doctest.testmod(importlib.import_module(f"incasem_like.ops.{name}"))
    assert result.attempted > 0 and result.failed == 0
