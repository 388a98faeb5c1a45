"""`incasem-like objects`: connected components of a segmentation -> object ids and a statistics table (CSV)."""

import argparse
import textwrap

from incasem_like.cli.commands import add_block_options, add_blockwise_options, formatter, run_command


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "objects",
        help="segmentation -> object ids (connected components) and per-object statistics in nm (CSV)",
        description=textwrap.dedent(
            """\
            Connected components of a segmentation (foreground = values > 0; 0/1 masks or any integer labels,
            touching labels become one object) with face connectivity (6 neighbours), blockwise and resumable.
            The ids equal one scipy.ndimage.label call over the whole volume: 1..N in raster order (z, y, x)
            of each object's first voxel, whatever --block.

            Writes the object ids as a dataset (--labels-out, uint32; kind labels) and a CSV with one row per
            object, in nm: voxel count, volume, surface area (marching cubes on the object's mask, Taubin-
            smoothed; within 3% of a ball's 4 pi r^2), centroid, bounding box (offset and shape), principal
            axis lengths 2 sqrt(5 lambda) from the covariance of the voxel centres (a solid ellipsoid's full
            axes) and whether the object touches the dataset's border. `incasem-like mesh` turns the object ids
            into 3D meshes. Rerunning an interrupted command finishes only the missing blocks."""
        ),
        epilog=textwrap.dedent(
            """\
            examples:
              incasem-like objects cell_6.zarr/volumes/labels/mito mito_objects.csv \\
                  --labels-out cell_6.zarr/volumes/objects/mito --workers 8
              incasem-like objects cell_6.zarr/volumes/predictions/run1/mito/segmentation run1_mito.csv"""
        ),
        formatter_class=formatter,
    )
    parser.add_argument("segmentation", metavar="SEG", help="segmentation dataset (integer; > 0 is foreground)")
    parser.add_argument("csv", metavar="OUT.csv", help="statistics table to write")
    parser.add_argument(
        "--labels-out",
        metavar="DATASET",
        help="object-id dataset to write (default: SEG_objects beside SEG)",
    )
    add_block_options(parser, block=256)
    add_blockwise_options(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> None:
    from incasem_like.workflow.steps import ObjectsStep

    step = ObjectsStep(
        segmentation=args.segmentation, csv=args.csv, labels_out=args.labels_out, block=args.block, chunk=args.chunk
    )
    run_command(step, args)
