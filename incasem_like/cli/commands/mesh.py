"""`incasem-like mesh`: object ids -> surface meshes (neuroglancer precomputed, PLY, OBJ)."""

import argparse
import textwrap

from incasem_like.cli.commands import add_blockwise_options, formatter, run_command


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "mesh",
        help="object ids (from objects) -> 3D surface meshes for neuroglancer, Blender, MeshLab, napari",
        description=textwrap.dedent(
            """\
            Surface meshes of every object of an object-id dataset written by `incasem-like objects`
            (--labels-out; a binary segmentation has no object ids: run objects on it first). Marching cubes
            (zmesh) on each object's bounding-box crop, Taubin-smoothed (--smooth), then simplified by quadric
            edge collapse (--simplify, --max-error; the CSV's surface areas are those of the meshes with
            --simplify 1, the default simplification changes a smooth object's area by under 0.1%), vertices in nm,
            x y z, with the dataset's offset applied.

            OUT/neuroglancer/ holds precomputed legacy meshes: add precomputed://<URL of OUT/neuroglancer> as a
            second source of the object-id segmentation layer to see 3D surfaces. OUT/ply/<id>.ply and
            OUT/obj/<id>.obj are for Blender, MeshLab or napari; OUT/summary.json counts what was written.
            Blockwise and resumable; the folder looks complete (neuroglancer/info, summary.json) only at the
            end."""
        ),
        epilog=textwrap.dedent(
            """\
            examples:
              incasem-like mesh cell_6.zarr/volumes/objects/mito meshes/mito --workers 8
              incasem-like mesh cell_6.zarr/volumes/objects/mito meshes/mito_coarse --step-size 2 --formats ply obj
              incasem-like mesh cell_6.zarr/volumes/objects/mito meshes/mito_full --simplify 1"""
        ),
        formatter_class=formatter,
    )
    parser.add_argument("labels", metavar="LABELS", help="object-id dataset written by incasem-like objects")
    parser.add_argument("output", metavar="OUT", help="output folder")
    parser.add_argument(
        "--formats",
        nargs="+",
        choices=("neuroglancer", "ply", "obj"),
        metavar="FORMAT",
        help="files to write: neuroglancer, ply, obj (default: neuroglancer ply)",
    )
    parser.add_argument(
        "--step-size",
        type=int,
        default=1,
        metavar="N",
        help="marching cubes step in voxels, for coarser meshes (default 1)",
    )
    parser.add_argument(
        "--smooth",
        type=int,
        metavar="N",
        help="Taubin smoothing iterations; 0 = raw marching cubes (default 10, as the areas of objects)",
    )
    parser.add_argument(
        "--simplify",
        type=int,
        default=4,
        metavar="F",
        help="reduce the triangles towards 1/F by quadric edge collapse; 1 = keep them all (default 4)",
    )
    parser.add_argument(
        "--max-error",
        type=float,
        default=0.25,
        metavar="E",
        help="largest error of a collapse, in voxels (x step size) of the finest axis (default 0.25)",
    )
    parser.add_argument("--block", type=int, default=256, metavar="N", help="block edge in voxels (default 256)")
    add_blockwise_options(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> None:
    from incasem_like.workflow.steps import MeshStep

    given = {"formats": args.formats, "smooth": args.smooth}
    step = MeshStep(
        labels=args.labels,
        output=args.output,
        step_size=args.step_size,
        simplify=args.simplify,
        max_error=args.max_error,
        block=args.block,
        **{field: value for field, value in given.items() if value is not None},
    )
    run_command(step, args)
