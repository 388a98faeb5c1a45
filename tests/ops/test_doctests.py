"""The examples in the docstrings of the pure functions hold."""

import doctest
import importlib
import pkgutil

import pytest

import incasem_like.ops

MODULES = [module.name for module in pkgutil.iter_modules(incasem_like.ops.__path__)]


def test_every_module_shows_an_example():
    expected = {"clahe", "components", "downsample", "instances", "interpolation", "metrics", "morphology"}
    assert expected | {"morphometrics", "surfaces"} <= set(MODULES)


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    result = doctest.testmod(importlib.import_module(f"incasem_like.ops.{name}"))
    assert result.attempted > 0 and result.failed == 0
