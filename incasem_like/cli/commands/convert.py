"""`incasem-like convert`: TIFF stack -> OME-Zarr dataset."""

import argparse
import textwrap

from incasem_like.cli.commands import add_blockwise_options, add_roi_option, formatter, roi_arguments, run_command


def register(subparsers) -> None:
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
        formatter_class=formatter,
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
    add_roi_option(parser, "crop, recorded so exports can undo it")
    add_blockwise_options(parser)
    parser.set_defaults(run=run, field_flags={"source": "SRC", "output": "OUT", "label_mode": "--labels"})


def run(args: argparse.Namespace) -> None:
    from incasem_like.workflow.steps import ConvertStep

    step = ConvertStep(
        source=args.src,
        output=args.out,
        voxel_size=tuple(args.voxel_size),
        offset=tuple(args.offset),
        chunk=args.chunk,
        label_mode="labels" if args.labels else "image",
        **roi_arguments(args),
    )
    run_command(step, args)
