"""The command-line options of every command that is a step against the step's fields (the same model a pipeline
file's stage is validated as): every field is set by an option (or filled in by the command), with the field's
default and a help text, and errors name the option, not the field."""

import argparse

import pytest
from pydantic_core import PydanticUndefined

from incasem_like.cli.main import build_parser
from incasem_like.stages.threshold import CleanUp
from incasem_like.workflow.step import EXECUTION_KEYS
from incasem_like.workflow.steps import STEP_TYPES
from tests.conftest import run_cli_in_process

#: fields a command fills in itself, not from an option
FILLED_IN = {"command", "clean_up"}
#: (command, option) -> why its default is not the field's: decided when the command runs
DECIDED_WHEN_RUN = {
    ("convert", "--labels"): "a flag: label_mode 'labels' when given",
    ("mesh", "--formats"): "left out: the step's default",
    ("mesh", "--smooth"): "left out: the step's default",
    ("labels clean", "--min-object-voxels"): "left out: the organelle's",
    ("labels clean", "--min-hole-voxels"): "left out: the organelle's",
    ("labels dilate", "--voxels"): "left out: the organelle's",
    ("labels metric-mask", "--dilation"): "left out: the organelle's",
    ("labels metric-mask", "--erosion"): "left out: the organelle's",
    ("objects", "--seed-distance"): "used with --split only: the step's seed_distance is None without it",
}


def command_parser(command: str) -> argparse.ArgumentParser:
    parser = build_parser()
    for word in command.split():
        subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = subparsers.choices[word]
    return parser


def named(parser: argparse.ArgumentParser, flag: str) -> argparse.Action:
    return next(a for a in parser._actions if flag in a.option_strings or flag in (a.metavar, a.dest))


@pytest.mark.parametrize("command", STEP_TYPES)
def test_every_step_field_has_an_option_with_its_default_and_help(command):
    parser = command_parser(command)
    flags = parser.get_default("field_flags")
    models = (STEP_TYPES[command], CleanUp) if command == "threshold" else (STEP_TYPES[command],)
    by_flag: dict[str, list] = {}
    for model in models:
        for name, field in model.model_fields.items():
            if name not in FILLED_IN:
                assert name in flags, f"{command}: no option sets {model.__name__}.{name}"
                by_flag.setdefault(flags[name], []).append(field.default)
    for flag, defaults in by_flag.items():
        action = named(parser, flag)
        assert action.help, f"{command} {flag}: no help"
        if (command, flag) in DECIDED_WHEN_RUN or PydanticUndefined in defaults or flag == "--roi":
            continue
        expected = defaults[0] if len(defaults) == 1 else tuple(defaults)  # one option may set several fields
        expected = tuple(expected) if isinstance(expected, list) else expected
        default = tuple(action.default) if isinstance(action.default, list) else action.default
        if isinstance(default, str) and not isinstance(expected, str):  # parsed by the command (--factor)
            default = type(expected)(default)
        assert default == expected, f"{command} {flag}: default {default!r}, the step's {expected!r}"


def test_a_pipeline_stage_tells_its_fields_from_how_it_runs():
    for command, step in STEP_TYPES.items():
        assert not set(step.model_fields) & set(EXECUTION_KEYS), command


@pytest.mark.parametrize(
    "arguments, message",
    [
        (
            ["clahe", "in.zarr/volumes/raw", "out.zarr/volumes/x", "--bins", 1],
            "--bins 1: Input should be greater than or equal to 2",
        ),
        (
            ["clahe", "in.zarr/volumes/raw", "out.zarr/volumes/x", "--clip", 2],
            "--clip 2.0: Input should be less than or equal to 1",
        ),
        (
            ["convert", "tiffs", "out.zarr/volumes/raw", "--voxel-size", 5, 5, 5, "--chunk", 0],
            "--chunk 0: Input should be greater than or equal to 1",
        ),
    ],
)
def test_a_bad_value_is_named_by_its_option(arguments, message, tmp_path, capsys):
    result = run_cli_in_process(capsys, *arguments, cwd=tmp_path)
    assert result.returncode == 2 and result.stderr.startswith(f"incasem-like: error: {message}"), result.stderr
