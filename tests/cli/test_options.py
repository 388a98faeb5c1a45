"""The command-line options of the blockwise commands against the fields of the stages they build: every field is
set by an option (or filled in by the command), with the field's default and a help text, and errors name the
option, not the field."""

import argparse

import pytest
from pydantic_core import PydanticUndefined

from incasem_like.cli.main import build_parser
from incasem_like.stages.clahe import ClaheStage
from incasem_like.stages.convert import ConvertStage
from incasem_like.stages.downsample import DownsampleStage
from incasem_like.stages.mask import MaskStage
from incasem_like.stages.mesh import MeshStage
from incasem_like.stages.predict import PredictStage
from incasem_like.stages.threshold import CleanUp, ThresholdStage
from tests.conftest import run_cli_in_process

STAGES = {
    "clahe": (ClaheStage,),
    "mask": (MaskStage,),
    "convert": (ConvertStage,),
    "threshold": (ThresholdStage, CleanUp),
    "predict": (PredictStage, CleanUp),
    "downsample": (DownsampleStage,),
    "mesh": (MeshStage,),
}
#: fields the command fills in itself, not from an option
FILLED_IN = {"clean_up", "checkpoint_sha256", "write_segmentation", "labels_run"}
#: (command, option) -> why its default is not the field's: decided when the command runs
DECIDED_WHEN_RUN = {
    ("predict", "--threshold"): "the model's recorded threshold",
    ("predict", "--tta"): "the model's recorded augmentation",
    ("predict", "--min-object-voxels"): "the model's recorded clean-up",
    ("predict", "--min-hole-voxels"): "the model's recorded clean-up",
    ("predict", "--device"): "auto: where the workers run",
    ("predict", "--precision"): "auto: from the device",
    ("convert", "--labels"): "a flag: label_mode 'labels' when given",
    ("downsample", "--image"): "a required choice between --image and --labels",
    ("mesh", "--formats"): "left out: the stage's default",
    ("mesh", "--smooth"): "left out: the stage's default",
}


def command_parser(command: str) -> argparse.ArgumentParser:
    subparsers = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return subparsers.choices[command]


def named(parser: argparse.ArgumentParser, flag: str) -> argparse.Action:
    return next(a for a in parser._actions if flag in a.option_strings or flag in (a.metavar, a.dest))


@pytest.mark.parametrize("command", STAGES)
def test_every_stage_field_has_an_option_with_its_default_and_help(command):
    parser = command_parser(command)
    flags = parser.get_default("field_flags")
    by_flag: dict[str, list] = {}
    for stage in STAGES[command]:
        for name, field in stage.model_fields.items():
            if name not in FILLED_IN:
                assert name in flags, f"{command}: no option sets {stage.__name__}.{name}"
                by_flag.setdefault(flags[name], []).append(field.default)
    for flag, defaults in by_flag.items():
        action = named(parser, flag)
        assert action.help, f"{command} {flag}: no help"
        if (command, flag) in DECIDED_WHEN_RUN or PydanticUndefined in defaults or flag == "--roi":
            continue
        expected = defaults[0] if len(defaults) == 1 else tuple(defaults)  # one option may set several fields
        default = tuple(action.default) if isinstance(action.default, list) else action.default
        if isinstance(default, str) and not isinstance(expected, str):  # parsed by the command (--factor)
            default = type(expected)(default)
        assert default == expected, f"{command} {flag}: default {default!r}, the stage's {expected!r}"


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["clahe", "in.zarr/volumes/raw", "out.zarr/volumes/x", "--bins", 1], "--bins 1: must be at least 2"),
        (["clahe", "in.zarr/volumes/raw", "out.zarr/volumes/x", "--clip", 2], "--clip 2.0: must be between 0 and 1"),
        (["convert", "tiffs", "out.zarr/volumes/raw", "--voxel-size", 5, 5, 5, "--chunk", 0], "--chunk 0: must be"),
    ],
)
def test_a_bad_value_is_named_by_its_option(arguments, message, tmp_path, capsys):
    result = run_cli_in_process(capsys, *arguments, cwd=tmp_path)
    assert result.returncode == 2 and result.stderr.startswith(f"incasem-like: error: {message}"), result.stderr
