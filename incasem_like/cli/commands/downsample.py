"""`incasem-like downsample`: a dataset -> a new dataset FACTOR times coarser along each axis."""

import argparse
import textwrap

from incasem_like.cli.commands import add_block_options, add_blockwise_options, formatter, one_or_three, run_command


def add_kind_options(parser: argparse.ArgumentParser) -> None:
    kind = parser.add_mutually_exclusive_group()
    kind.add_argument(
        "--labels",
        dest="kind",
        action="store_const",
        const="labels",
        help="treat the input as labels: most frequent value per cell (default: the input's recorded kind)",
    )
    kind.add_argument(
        "--image", dest="kind", action="store_const", const="image", help="treat the input as an image: mean per cell"
    )


VALUE_RULES = """\
Images (uint8, uint16, float32) get the mean of each FACTOR^3 cell, rounded (halves to even), in the same dtype;
labels and masks (integers) get the most frequent value of the cell, ties going to the larger id (so a
0/1 mask cell that is half foreground stays foreground). Which rule applies comes from the kind the input's
writer recorded (convert --labels records labels); --image/--labels override it. Shapes that are not a
multiple of the factor keep their last partial cells, computed from the voxels that exist."""


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "downsample",
        help="a dataset -> a new dataset FACTOR times coarser (mean for images, majority for labels)",
        description="Downsample a dataset by an integer factor (or one per axis), blockwise and resumable.\n\n"
        + VALUE_RULES
        + "\n\nThe output has FACTOR x the input's voxel size and the same offset (its first voxel's corner).",
        epilog=textwrap.dedent(
            """\
            examples:
              incasem-like downsample cell_6.zarr/volumes/raw cell_6.zarr/volumes/raw_10nm --workers 4
              incasem-like downsample cell_6.zarr/volumes/labels/mito cell_6.zarr/volumes/labels/mito_20nm --factor 4
              incasem-like downsample crop.zarr/volumes/raw crop.zarr/volumes/raw_2x --block 64 --chunk 64
              incasem-like downsample vnc.zarr/volumes/raw vnc.zarr/volumes/raw_9.2nm --factor 1 2 2"""
        ),
        formatter_class=formatter,
    )
    parser.add_argument("input", metavar="IN", help="input dataset, e.g. cell_6.zarr/volumes/raw")
    parser.add_argument("output", metavar="OUT", help="output dataset, e.g. cell_6.zarr/volumes/raw_10nm")
    parser.add_argument(
        "--factor",
        nargs="+",
        default="2",
        metavar="F",
        help="integer factor >= 2 along z, y and x (default 2), or three (z y x, each >= 1) for anisotropic voxels, "
        "e.g. 1 2 2",
    )
    add_kind_options(parser)
    add_block_options(parser, block=128, of="output ")
    add_blockwise_options(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> None:
    from incasem_like.stages.downsample import parse_int
    from incasem_like.store.datasets import open_dataset
    from incasem_like.workflow.steps import DownsampleStep

    values = [args.factor] if isinstance(args.factor, str) else args.factor
    minimum = 2 if len(values) == 1 else 1  # one factor coarsens every axis; per axis, 1 keeps one
    factor = one_or_three([parse_int(value, "--factor", minimum) for value in values], "--factor")
    open_dataset(args.input)  # a missing or incomplete input is named before anything else
    step = DownsampleStep(
        input=args.input, output=args.output, factor=factor, kind=args.kind, block=args.block, chunk=args.chunk
    )
    run_command(step, args)
