"""`incasem-like mask`: raw dataset -> coarse cell mask (uint8 0/1)."""

import argparse
import textwrap

from incasem_like.cli.commands import (
    add_block_options,
    add_blockwise_options,
    add_roi_option,
    formatter,
    one_or_three,
    roi_arguments,
    run_command,
)


def add_max_span_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--max-span",
        type=int,
        default=64,
        metavar="N",
        help="holes/objects count as small only within N voxels along every axis; larger N reads more context "
        "around each block (default 64)",
    )


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "mask",
        help="raw dataset -> coarse cell mask (1 = cell)",
        description=textwrap.dedent(
            """\
            Coarse cell mask of a raw dataset (uint8 or uint16), blockwise and resumable: intensity window
            MIN <= raw <= MAX, binary opening with ball(--opening), closing with ball(--closing), fill holes
            smaller than --min-hole-voxels, remove objects smaller than --min-object-voxels (face
            connectivity). Writes uint8, 1 = cell, 0 = outside. Defaults are the ASEM method's.

            The result is that of one call on the whole volume, whatever --block: holes and objects count as
            small only if they also span at most --max-span voxels along every axis (so that a block can see
            them whole), and blocks read 2 x (opening + closing) + the span limits of both steps of context
            (138 voxels for the defaults). Thin holes or objects under the size limits but longer than
            --max-span are left alone."""
        ),
        epilog=textwrap.dedent(
            """\
            examples:
              incasem-like mask cell_6.zarr/volumes/raw cell_6.zarr/volumes/masks/cell --workers 8
              incasem-like mask cell_6.zarr/volumes/raw cell_6.zarr/volumes/masks/cell --gray 10 200 --opening 2
              incasem-like mask cell_6.zarr/volumes/raw crop.zarr/volumes/masks/cell --roi 0 0 0 128 512 512"""
        ),
        formatter_class=formatter,
    )
    parser.add_argument("input", metavar="IN", help="raw dataset, e.g. cell_6.zarr/volumes/raw")
    parser.add_argument("output", metavar="OUT", help="output dataset, e.g. cell_6.zarr/volumes/masks/cell")
    parser.add_argument(
        "--gray",
        type=int,
        nargs=2,
        default=(2, 180),
        metavar=("MIN", "MAX"),
        help="intensity window counted as cell, inclusive (default 2 180)",
    )
    for flag, default in (("--opening", 3), ("--closing", 2)):
        parser.add_argument(
            flag,
            type=int,
            nargs="+",
            default=default,
            metavar="R",
            help=f"{flag[2:]} ball radius in voxels (default {default}), or three (z y x) for anisotropic voxels",
        )
    parser.add_argument(
        "--min-hole-voxels", type=int, default=100000, metavar="N", help="fill holes smaller than N (default 100000)"
    )
    parser.add_argument(
        "--min-object-voxels",
        type=int,
        default=100000,
        metavar="N",
        help="remove objects smaller than N (default 100000)",
    )
    add_max_span_option(parser)
    add_block_options(parser)
    add_roi_option(parser, "mask only this region")
    add_blockwise_options(parser)
    flags = {"opening_radius": "--opening", "closing_radius": "--closing"}
    parser.set_defaults(run=run, field_flags=flags)


def run(args: argparse.Namespace) -> None:
    from incasem_like.workflow.steps import MaskStep

    step = MaskStep(
        input=args.input,
        output=args.output,
        gray=tuple(args.gray),
        opening_radius=one_or_three(args.opening, "--opening"),
        closing_radius=one_or_three(args.closing, "--closing"),
        min_hole_voxels=args.min_hole_voxels,
        min_object_voxels=args.min_object_voxels,
        max_span=args.max_span,
        block=args.block,
        chunk=args.chunk,
        **roi_arguments(args),
    )
    run_command(step, args)
