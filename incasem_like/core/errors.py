"""Errors that reach the user as one line and a non-zero exit code."""

import difflib
import re
import typing

from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails


class UserError(Exception):
    """Bad input: the message names the file/key/value and the fix; the CLI prints it and exits with 2."""


class FieldError(UserError):
    """A `UserError` about fields, written with `{field}` placeholders: the CLI shows its options there, a pipeline
    file its keys (the field names)."""

    def __init__(self, template: str):
        self.template = template
        super().__init__(self.named({}))

    def named(self, names: typing.Mapping[str, str]) -> str:
        return re.sub(r"\{([A-Za-z_][A-Za-z0-9_]*)\}", lambda match: names.get(match[1], match[1]), self.template)


class BlockwiseRunFailed(Exception):
    """Some blocks still failed after their retries; the output is left marked incomplete (exit code 1)."""


def describe_validation_error(
    error: ValidationError, model: type[BaseModel] | None = None, flags: typing.Mapping[str, str] | None = None
) -> str:
    """One line for a pydantic validation error: the offending key, its value and what is wrong; an unknown key of
    `model` (the validated class) gets the closest known keys as suggestions, missing keys are listed together.
    Validators speak of the value only ("must be at least 2"); `flags` (field name -> command-line option) names a
    field by the option that sets it. The one formatter of validation errors: config files, pipeline files, stage
    and step fields, cluster settings."""
    first = main_problem(error)
    key = location(first["loc"])
    if first["type"] == "missing":
        missing = [location(problem["loc"]) for problem in error.errors() if problem["type"] == "missing"]
        named = [flags.get(name, name) if flags else name for name in missing]
        one = len(named) == 1
        return f"{', '.join(named)} {'is' if one else 'are'} missing; add {'it' if one else 'them'}"
    others = error.error_count() - 1
    more = f" (and {others} more problem{'s' if others > 1 else ''})" if others else ""
    if first["type"] == "extra_forbidden":
        known = _keys_at(model, first["loc"]) if model else []
        close = difflib.get_close_matches(str(first["loc"][-1]), known, n=2)
        hint = f"; did you mean {' or '.join(map(repr, close))}?" if close else ""
        listing = f" (the keys here: {', '.join(known)})" if known and not close else ""
        return f"{key or 'config'}: unknown key{hint}{listing}{more}"
    message = first["msg"].removeprefix("Value error, ")
    raw = first.get("input")
    value = _Quoted(raw)
    if flags and key in flags:
        shown = _Quoted(" ".join(map(str, raw))) if isinstance(raw, list | tuple) else value
        return f"{flags[key]} {shown}: {message}{more}"
    parent, index = first["loc"][:-1], (first["loc"] or [None])[-1]
    if flags and isinstance(index, int) and location(parent) in flags:  # one value of an option taking several
        return f"{flags[location(parent)]} value {index + 1} = {value}: {message}{more}"
    if not key:  # a rule over several keys: its message names them
        return f"{message}{more}"
    return f"{key} = {value!r}: {message}{more}"


def shortened(text: str, limit: int = 200) -> str:
    """Text as a one-line message quotes it: at most `limit` characters of it, and how long it was."""
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


class _Quoted:
    """A value as an error message quotes it (`shortened`), as `repr` or as `str`."""

    def __init__(self, value: object):
        self.value = value

    def __repr__(self) -> str:
        return shortened(repr(self.value))

    def __str__(self) -> str:
        return shortened(str(self.value))


def main_problem(error: ValidationError) -> ErrorDetails:
    """The error to report: an unknown key first (a typo also makes the intended key look missing)."""
    problems = error.errors()
    return next((problem for problem in problems if problem["type"] == "extra_forbidden"), problems[0])


def location(loc: tuple) -> str:
    """`training[0].labels` for the location ("training", 0, "labels"); the names pydantic gives the members of a
    union (`constrained-float`, `tuple[...]`) are no keys and are left out."""
    keys = [part for part in loc if isinstance(part, int) or re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", str(part))]
    return "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in keys).lstrip(".")


def _keys_at(model: type[BaseModel] | None, loc: tuple) -> list[str]:
    """The field names of the (nested) model that holds the key at `loc`."""
    for part in loc[:-1]:
        if isinstance(part, int):  # a list index
            continue
        field = model.model_fields.get(part) if model else None
        model = _model_in(field.annotation) if field else None
        if model is None:
            return []
    return list(model.model_fields) if model else []


def _model_in(annotation) -> type[BaseModel] | None:
    """The pydantic model in a field's annotation (`X`, `X | None`, `list[X]`), if any."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for argument in typing.get_args(annotation):
        if found := _model_in(argument):
            return found
    return None
