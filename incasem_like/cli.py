"""The `incasem-like` command: one subcommand per stage; each only parses arguments and composes stages."""

import argparse
import logging
import sys
import textwrap

from pydantic import ValidationError

from incasem_like import __version__
from incasem_like.errors import BlockwiseRunFailed, UserError, describe_validation_error

EPILOG = """\
examples:
  incasem-like demo
  incasem-like convert slices/ cell_6.zarr/volumes/raw --voxel-size 5 5 5 --workers 8
  incasem-like convert labels/ cell_6.zarr/volumes/labels/mito --voxel-size 5 5 5 --labels

datasets are addressed as CONTAINER.zarr/DATASET (e.g. cell_6.zarr/volumes/raw); world units are nm, z y x.
"""


def _formatter(prog: str) -> argparse.HelpFormatter:
    return argparse.RawDescriptionHelpFormatter(prog, max_help_position=32)


def _add_blockwise_options(parser: argparse.ArgumentParser, workers: int = 1) -> None:
    parser.add_argument(
        "--workers", type=int, default=workers, metavar="N", help=f"worker processes (default {workers})"
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="replace an existing output (otherwise it is never touched)"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def _add_convert(subparsers) -> None:
    parser = subparsers.add_parser(
        "convert",
        help="TIFF stack (slice folder or multi-page TIFF) -> OME-Zarr dataset",
        description=textwrap.dedent(
            """\
            Convert a TIFF stack into an OME-Zarr dataset, blockwise and resumable.

            SRC is a folder of 2D TIFF slices (ordered by the number in the file name: slice_2 before
            slice_10) or one multi-page (Big)TIFF. uint8 and uint16 are kept as they are; with --labels,
            0/255 masks become 0/1 uint8 and other integer labels are kept. Every slice is checked before
            anything is written. Rerunning an interrupted command finishes only the missing blocks."""
        ),
        epilog=textwrap.dedent(
            """\
            examples:
              incasem-like convert cell_6/raw cell_6.zarr/volumes/raw --voxel-size 5 5 5 --workers 8
              incasem-like convert cell_6/mito cell_6.zarr/volumes/labels/mito --voxel-size 5 5 5 --labels
              incasem-like convert stack.tif crop.zarr/volumes/raw --voxel-size 5 5 5 --roi 0 100 100 64 512 512"""
        ),
        formatter_class=_formatter,
    )
    parser.add_argument("src", metavar="SRC", help="folder of TIFF slices, or a multi-page TIFF")
    parser.add_argument("out", metavar="OUT", help="output dataset, e.g. cell_6.zarr/volumes/raw")
    parser.add_argument(
        "--voxel-size", type=int, nargs=3, required=True, metavar=("Z", "Y", "X"), help="voxel size in nm"
    )
    parser.add_argument(
        "--offset",
        type=int,
        nargs=3,
        default=(0, 0, 0),
        metavar=("Z", "Y", "X"),
        help="world position of the stack's first voxel in nm (default 0 0 0)",
    )
    parser.add_argument("--chunk", type=int, default=128, metavar="N", help="zarr chunk edge in voxels (default 128)")
    parser.add_argument("--labels", action="store_true", help="the stack holds labels (0/255 masks become 0/1)")
    parser.add_argument(
        "--roi",
        type=int,
        nargs=6,
        metavar=("OZ", "OY", "OX", "SZ", "SY", "SX"),
        help="crop: offset and shape in voxels; recorded so exports can undo it",
    )
    _add_blockwise_options(parser)
    parser.set_defaults(run=_run_convert)


def _run_convert(args: argparse.Namespace) -> None:
    from incasem_like.blockwise.runner import run_stage
    from incasem_like.convert import ConvertStage, TiffStack, label_mode_for

    stage = ConvertStage(
        source=args.src,
        output=args.out,
        voxel_size=tuple(args.voxel_size),
        offset=tuple(args.offset),
        chunk=args.chunk,
        label_mode=label_mode_for(TiffStack.locate(args.src)) if args.labels else "image",
        roi_offset=tuple(args.roi[:3]) if args.roi else None,
        roi_shape=tuple(args.roi[3:]) if args.roi else None,
    )
    summary = run_stage(stage, workers=args.workers, overwrite=args.overwrite, progress=not args.quiet)
    _print_done(summary)


def _add_demo(subparsers) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="run the pipeline on the embedded sample data (offline, CPU)",
        description="Convert the embedded sample (a 40 x 384 x 384 crop of the Lucchi FIB-SEM volume and its "
        "mitochondria labels) into an OME-Zarr container and print where it is.",
        epilog="examples:\n  incasem-like demo\n  incasem-like demo --out /tmp/demo --workers 2",
        formatter_class=_formatter,
    )
    parser.add_argument(
        "--out", default="incasem_like_demo", metavar="DIR", help="output folder (default ./incasem_like_demo)"
    )
    _add_blockwise_options(parser, workers=2)
    parser.set_defaults(run=_run_demo)


def _run_demo(args: argparse.Namespace) -> None:
    from incasem_like.demo import run_demo

    print("incasem-like demo: converting the embedded Lucchi sample (raw + mitochondria labels)")
    container = run_demo(args.out, workers=args.workers, overwrite=args.overwrite, progress=not args.quiet)
    print(f"done: the sample cell is in {container}")


def _print_done(summary: dict) -> None:
    from incasem_like.datasets import open_dataset

    array = open_dataset(summary["output"])
    if summary.get("already_complete"):
        print(f"{summary['output']} is already complete (same command, same parameters); nothing to do")
        return
    print(
        f"wrote {summary['output']}: {tuple(array.shape)} {array.dtype}, voxel size {tuple(array.voxel_size)} nm, "
        f"offset {tuple(array.offset)} nm\n"
        f"  {summary['blocks_processed']} blocks processed, {summary['blocks_skipped']} skipped (already done), "
        f"{summary['seconds']:.1f} s, {summary['voxels_per_second'] / 1e6:.1f} M voxels/s"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="incasem-like",
        description="Organelle segmentation of whole-cell volume EM: TIFF -> OME-Zarr -> preprocessing -> "
        "3D U-Net training and prediction -> evaluation and neuroglancer review.",
        epilog=EPILOG,
        formatter_class=_formatter,
    )
    parser.add_argument("--version", action="version", version=f"incasem-like {__version__}")
    subparsers = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)
    _add_convert(subparsers)
    _add_demo(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        args.run(args)
    except UserError as error:
        print(f"incasem-like: error: {error}", file=sys.stderr)
        return 2
    except ValidationError as error:
        print(f"incasem-like: error: {describe_validation_error(error)}", file=sys.stderr)
        return 2
    except BlockwiseRunFailed as error:
        print(f"incasem-like: failed: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("incasem-like: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    return 0
