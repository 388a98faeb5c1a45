"""`incasem-like objects`: connected components of a segmentation -> object ids and a statistics table (CSV)."""

import argparse
import textwrap

from incasem_like.cli.commands import add_block_options, add_blockwise_options, formatter, run_command
from incasem_like.stages.objects import DEFAULT_MAX_DISTANCE, DEFAULT_REACH, DEFAULT_SEED_DISTANCE


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
            axes) and whether the object touches the dataset's border; surface-to-volume ratio, sphericity,
            equivalent diameter, the major axis's direction, 2D sections across --section-axis (mean and sd
            over slices of the first and second axis lengths and the perimeter), skeleton length and branch
            count, and distances to --other and to the --mask boundary. `incasem-like mesh` turns the object ids
            into 3D meshes. Rerunning an interrupted command finishes only the missing blocks.

            --split separates touching objects: voxels at least --seed-distance from the background are seeds
            (each connected set one instance), grown through the foreground up to --reach; foreground no seed
            reaches keeps an instance of its own. Still independent of --block and --workers."""
        ),
        epilog=textwrap.dedent(
            """\
            examples:
              incasem-like objects cell_6.zarr/volumes/labels/mito mito_objects.csv \\
                  --labels-out cell_6.zarr/volumes/objects/mito --workers 8
              incasem-like objects cell_6.zarr/volumes/predictions/run1/mito/segmentation run1_mito.csv \\
                  --split --mask cell_6.zarr/volumes/masks/cell"""
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
    split = parser.add_argument_group("splitting touching objects")
    split.add_argument(
        "--split",
        action="store_true",
        help="split touching objects: seeds where the distance to the background is at least --seed-distance, "
        "grown through the foreground up to --reach (the ids stay independent of --block)",
    )
    split.add_argument(
        "--seed-distance",
        type=float,
        default=DEFAULT_SEED_DISTANCE,
        metavar="NM",
        help="a voxel is a seed when the background is at least this far, in nm (default: %(default)g, chosen on "
        "Lucchi++ mitochondria at 5 nm); at least one voxel",
    )
    split.add_argument(
        "--reach",
        type=float,
        default=DEFAULT_REACH,
        metavar="NM",
        help="how far seeds grow through the foreground, in nm (default: %(default)g); foreground beyond it "
        "forms objects of its own",
    )
    measures = parser.add_argument_group("morphometrics")
    measures.add_argument(
        "--section-axis",
        choices=("z", "y", "x"),
        default="z",
        help="the 2D cross-sections are the slices across this axis (default: z, the stack's slices)",
    )
    measures.add_argument(
        "--other",
        metavar="DATASET",
        help="a segmentation of another class on the same grid: each object's distance to its nearest voxel",
    )
    measures.add_argument(
        "--mask",
        metavar="DATASET",
        help="a cell mask on the same grid: each object's distance to the mask's outside (the cell boundary)",
    )
    measures.add_argument(
        "--max-distance",
        type=float,
        default=DEFAULT_MAX_DISTANCE,
        metavar="NM",
        help="distances are looked for this far, in nm; farther ones are written as inf (default: %(default)g)",
    )
    add_block_options(parser, block=256)
    add_blockwise_options(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> None:
    from incasem_like.workflow.steps import ObjectsStep

    step = ObjectsStep(
        segmentation=args.segmentation,
        csv=args.csv,
        labels_out=args.labels_out,
        block=args.block,
        chunk=args.chunk,
        seed_distance=args.seed_distance if args.split else None,
        reach=args.reach,
        section_axis=args.section_axis,
        other=args.other,
        mask=args.mask,
        max_distance=args.max_distance,
    )
    run_command(step, args)
