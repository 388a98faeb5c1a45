"""`incasem-like clahe`: seam-free blockwise 3D CLAHE."""

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

#: ClaheStage's default block (kept here so `--help` does not import skimage; a test checks they agree)
CLAHE_BLOCK = 512


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "clahe",
        help="3D contrast-limited adaptive histogram equalization (seam-free, blockwise)",
        description=textwrap.dedent(
            """\
            3D CLAHE of a uint8 dataset into a uint8 dataset, as skimage.exposure.equalize_adapthist over the
            whole volume (tiles anchored at the volume corner, the dtype's intensity range), however it is
            cut into blocks. Each block reads one kernel of context on each side."""
        ),
        epilog=textwrap.dedent(
            """\
            examples:
              incasem-like clahe cell_6.zarr/volumes/raw cell_6.zarr/volumes/raw_clahe --workers 8
              incasem-like clahe cell_6.zarr/volumes/raw cell_6.zarr/volumes/raw_clahe --kernel 64 --clip 0.01
              incasem-like clahe vnc.zarr/volumes/raw vnc.zarr/volumes/raw_clahe --kernel 4 128 128"""
        ),
        formatter_class=formatter,
    )
    parser.add_argument("input", metavar="IN", help="uint8 dataset, e.g. cell_6.zarr/volumes/raw")
    parser.add_argument("output", metavar="OUT", help="output dataset, e.g. cell_6.zarr/volumes/raw_clahe")
    parser.add_argument(
        "--kernel",
        type=int,
        nargs="+",
        default=128,
        metavar="N",
        help="tile edge in voxels (default 128), or three (z y x) for anisotropic voxels, e.g. 4 128 128",
    )
    parser.add_argument("--clip", type=float, default=0.02, metavar="C", help="clip limit, 0..1 (default 0.02)")
    parser.add_argument("--bins", type=int, default=256, metavar="N", help="histogram bins (default 256)")
    parser.add_argument(
        "--intensity-range",
        type=int,
        nargs=2,
        default=(0, 255),
        metavar=("LOW", "HIGH"),
        help="input values stretched over the full range (default 0 255; give the volume's min and max to match "
        "one skimage call on it)",
    )
    add_block_options(parser, block=CLAHE_BLOCK)
    add_roi_option(parser, "only this region of IN (the tile grid stays that of the whole volume)")
    add_blockwise_options(parser)
    parser.set_defaults(run=run, field_flags={"clip_limit": "--clip", "nbins": "--bins"})


def run(args: argparse.Namespace) -> None:
    from incasem_like.workflow.steps import ClaheStep

    step = ClaheStep(
        input=args.input,
        output=args.output,
        kernel=one_or_three(args.kernel, "--kernel"),
        clip_limit=args.clip,
        nbins=args.bins,
        intensity_range=tuple(args.intensity_range),
        block=args.block,
        chunk=args.chunk,
        **roi_arguments(args),
    )
    run_command(step, args)
