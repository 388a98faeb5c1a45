"""Every number a user can set has a lower and an upper bound and may not be infinite or NaN: the fields of every
config, stage and step, walked recursively through tuples, lists, optionals and nested models."""

import doctest
import importlib
import pkgutil
import types
import typing

import annotated_types
import pytest
from pydantic import BaseModel

import incasem_like.stages
from incasem_like.blockwise.cluster import ClusterSettings
from incasem_like.blockwise.stage import BlockwiseStage
from incasem_like.core import bounds
from incasem_like.stages.labels import OrganelleConfig
from incasem_like.training.config import TrainConfig
from incasem_like.workflow.step import ExecutionSpec
from incasem_like.workflow.steps import STEP_TYPES

LOWER = (annotated_types.Ge, annotated_types.Gt)
UPPER = (annotated_types.Le, annotated_types.Lt)


def all_stages() -> list[type[BlockwiseStage]]:
    for module in pkgutil.iter_modules(incasem_like.stages.__path__):
        importlib.import_module(f"incasem_like.stages.{module.name}")
    found, todo = [], list(BlockwiseStage.__subclasses__())
    while todo:
        stage = todo.pop()
        found.append(stage)
        todo.extend(stage.__subclasses__())
    return [stage for stage in found if stage.__module__.startswith("incasem_like.")]


MODELS: list[type[BaseModel]] = [
    *STEP_TYPES.values(),
    *all_stages(),
    TrainConfig,
    OrganelleConfig,
    ClusterSettings,
    ExecutionSpec,
]


def unbounded(model: type[BaseModel], seen: set) -> list[str]:
    if model in seen:
        return []
    seen.add(model)
    found = []
    for name, field in model.model_fields.items():
        found += _check(field.annotation, list(field.metadata), f"{model.__name__}.{name}", seen)
    return found


def _check(annotation, metadata: list, where: str, seen: set) -> list[str]:
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        base, *more = typing.get_args(annotation)
        inner = [item for extra in more for item in getattr(extra, "metadata", [extra])]
        return _check(base, [*metadata, *inner], where, seen)
    if annotation in (int, float):
        bounded = any(isinstance(m, LOWER) for m in metadata) and any(isinstance(m, UPPER) for m in metadata)
        return [] if bounded else [where]
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return unbounded(annotation, seen)
    if origin in (typing.Union, types.UnionType, tuple, list, dict) or origin is typing.Literal:
        if origin is typing.Literal:
            return []
        return [
            found
            for arg in typing.get_args(annotation)
            if arg is not Ellipsis
            for found in _check(arg, metadata, where, seen)
        ]
    return []


def test_every_number_has_both_bounds():
    seen: set = set()
    assert [where for model in MODELS for where in unbounded(model, seen)] == []


@pytest.mark.parametrize("model", sorted({m for m in MODELS}, key=lambda m: m.__name__), ids=lambda m: m.__name__)
def test_infinite_and_nan_numbers_are_refused(model):
    assert model.model_config.get("allow_inf_nan") is False and model.model_config.get("extra") == "forbid"


def test_the_bounds_examples():
    assert doctest.testmod(bounds).failed == 0
