"""The `incasem-like` command: one subcommand per stage; each only parses arguments and composes stages.

Every subcommand lives in `incasem_like.cli.commands.<name>` with a `register(subparsers)` function; stage modules
are imported only when their command runs, so `--help` stays fast.
"""

import argparse
import importlib
import logging
import shlex
import sys
import warnings

from pydantic import ValidationError

from incasem_like import __version__
from incasem_like.core.errors import BlockwiseRunFailed, FieldError, UserError, describe_validation_error

COMMANDS = (
    "demo",
    "convert",
    "rescale",
    "clahe",
    "mask",
    "labels",
    "downsample",
    "pyramid",
    "train",
    "finetune",
    "predict",
    "threshold",
    "evaluate",
    "export",
    "export-model",
    "objects",
    "mesh",
    "report",
    "view",
    "run",
)

EPILOG = """\
examples:
  incasem-like demo
  incasem-like convert slices/ cell_6.zarr/volumes/raw --voxel-size 5 5 5 --workers 8
  incasem-like convert labels/ cell_6.zarr/volumes/labels/mito --voxel-size 5 5 5 --labels
  incasem-like run pipelines/predict_cell.yaml --set tiffs=slices/ --set container=cell_6.zarr

datasets are addressed as CONTAINER.zarr/DATASET (e.g. cell_6.zarr/volumes/raw); lengths are nm (any positive
voxel size), axes z y x.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="incasem-like",
        description="Organelle segmentation of whole-cell volume EM: TIFF -> OME-Zarr -> preprocessing -> "
        "3D U-Net training and prediction -> evaluation and neuroglancer review.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"incasem-like {__version__}")
    subparsers = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)
    for name in COMMANDS:
        importlib.import_module(f"incasem_like.cli.commands.{name.replace('-', '_')}").register(subparsers)
    _name_fields_by_options(subparsers)
    return parser


def _name_fields_by_options(subparsers: argparse._SubParsersAction) -> None:
    """Give each command (and each operation of a command such as `labels`) its `field_flags` default."""
    for command in subparsers.choices.values():
        command.set_defaults(field_flags=field_flags(command))
        for action in command._actions:
            if isinstance(action, argparse._SubParsersAction):
                _name_fields_by_options(action)


def field_flags(command: argparse.ArgumentParser) -> dict[str, str]:
    """Stage field name -> the command's option that sets it: an option's destination names its field, unless the
    command's own `field_flags` default maps the field to another option."""
    flags = {
        action.dest: action.option_strings[-1] if action.option_strings else str(action.metavar or action.dest)
        for action in command._actions
    }
    if "roi" in flags:
        flags.update(roi_offset=flags["roi"], roi_shape=flags["roi"])
    return {**flags, **(command.get_default("field_flags") or {})}


def rerun(argv: list[str], args: argparse.Namespace) -> str:
    """The command line that resumes an interrupted command: the same, with the option its command needs for it
    (`train --resume`; `finetune --overwrite` starts over)."""
    option = args.resume_option if hasattr(args, "resume_option") else None
    extra = [option] if option and option not in argv else []
    return shlex.join(["incasem-like", *argv, *extra])


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        args.run(args)
        return 0
    except FieldError as error:
        message, code = f"incasem-like: error: {error.named(args.field_flags)}", 2
    except UserError as error:
        message, code = f"incasem-like: error: {error}", 2
    except ValidationError as error:
        message, code = f"incasem-like: error: {describe_validation_error(error, flags=args.field_flags)}", 2
    except BlockwiseRunFailed as error:
        message, code = f"incasem-like: failed: {error}", 1
    except KeyboardInterrupt:
        message, code = f"incasem-like: interrupted; resume with: {rerun(argv, args)}", 130
    except OSError as error:  # no space left, a vanished file, a failing disk: what the system said, then resume
        where = f" ({error.filename})" if error.filename else ""
        what = error.strerror or type(error).__name__
        message, code = f"incasem-like: failed: {what}{where}; fix that, then resume with: {rerun(argv, args)}", 1
    # a failed zarr read abandons the request's other chunk reads, which asyncio (tasks destroyed) and the garbage
    # collector (coroutines never awaited) would report one by one at exit
    logging.getLogger("asyncio").setLevel(logging.CRITICAL)
    warnings.filterwarnings("ignore", message=r"coroutine .* was never awaited", category=RuntimeWarning)
    print(message, file=sys.stderr)
    return code
