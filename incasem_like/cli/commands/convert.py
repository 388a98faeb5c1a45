"""`incasem-like convert`: TIFF stack or MRC tomogram -> OME-Zarr dataset."""

import argparse
import textwrap

from incasem_like.cli.commands import add_blockwise_options, add_roi_option, formatter, roi_arguments, run_command


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "convert",
        help="TIFF stack (slice folder or multi-page TIFF) or MRC tomogram -> OME-Zarr dataset",
        description=textwrap.dedent(
            """\
            Convert a TIFF stack or a tomogram into an OME-Zarr dataset, blockwise and resumable.

            SRC is a folder of 2D TIFF slices (ordered by the number in the file name: slice_2 before
            slice_10), one multi-page (Big)TIFF, or one MRC/REC/MAP/ST file (also .gz/.bz2; modes 0, 1, 2, 6),
            read memory-mapped with its voxel size from the header (Å; --voxel-size overrides it, with a
            warning where they differ). uint8, uint16, int8, int16 and float32 images are kept as they are
            (float data must be finite; training and prediction normalize them by a recorded rule, and
            `incasem-like rescale` maps them to uint8/uint16 for CLAHE); with --labels, 0/255 masks become 0/1
            uint8 and other integer labels are kept. Every slice is checked before anything is written.
            Rerunning an interrupted command finishes only the missing blocks."""
        ),
        epilog=textwrap.dedent(
            """\
            examples:
              incasem-like convert cell_6/raw cell_6.zarr/volumes/raw --voxel-size 5 5 5 --workers 8
              incasem-like convert cell_6/mito cell_6.zarr/volumes/labels/mito --voxel-size 5 5 5 --labels
              incasem-like convert stack.tif crop.zarr/volumes/raw --voxel-size 5 5 5 --roi 0 100 100 64 512 512
              incasem-like convert vnc/raw vnc.zarr/volumes/raw --voxel-size 50 4.6 4.6
              incasem-like convert tomo.rec tomo.zarr/volumes/raw"""
        ),
        formatter_class=formatter,
    )
    parser.add_argument("src", metavar="SRC", help="folder of TIFF slices, a multi-page TIFF, or an MRC file")
    parser.add_argument("out", metavar="OUT", help="output dataset, e.g. cell_6.zarr/volumes/raw")
    parser.add_argument(
        "--voxel-size",
        type=float,
        nargs=3,
        metavar=("Z", "Y", "X"),
        help="voxel size in nm, any positive numbers (e.g. 50 4.6 4.6); needed for TIFF, overrides an MRC header",
    )
    parser.add_argument(
        "--offset",
        type=float,
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
        voxel_size=tuple(args.voxel_size) if args.voxel_size else None,
        offset=tuple(args.offset),
        chunk=args.chunk,
        label_mode="labels" if args.labels else "image",
        **roi_arguments(args),
    )
    run_command(step, args)
