"""`incasem-like mesh`: object ids -> surface meshes (neuroglancer precomputed, PLY, OBJ)."""

import argparse
import textwrap
from typing import Any

from incasem_like.cli.commands import add_blockwise_options, formatter, launcher_from_args


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "mesh",
        help="object ids (from objects) -> 3D surface meshes for neuroglancer, Blender, MeshLab, napari",
        description=textwrap.dedent(
            """\
            Surface meshes of every object of an object-id dataset written by `incasem-like objects`
            (--labels-out; a binary segmentation has no object ids: run objects on it first). Marching cubes
            on each object's bounding-box crop, Taubin-smoothed (--smooth; the CSV's surface areas are those of
            the default meshes), vertices in nm, x y z, with the dataset's offset applied.

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
              incasem-like mesh cell_6.zarr/volumes/objects/mito meshes/mito_coarse --step-size 2 --formats ply obj"""
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
    parser.add_argument("--block", type=int, default=256, metavar="N", help="block edge in voxels (default 256)")
    add_blockwise_options(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> None:
    from incasem_like.stages.mesh import MeshStage, make_meshes

    options: dict[str, Any] = {"formats": tuple(dict.fromkeys(args.formats))} if args.formats else {}
    if args.smooth is not None:
        options["smooth"] = args.smooth
    stage = MeshStage(labels=args.labels, output=args.output, step_size=args.step_size, block=args.block, **options)
    launcher = launcher_from_args(args)
    result = make_meshes(
        stage, workers=args.workers, overwrite=args.overwrite, progress=not args.quiet, launcher=launcher
    )
    summary = result.summary
    if result.run is None:
        print(f"{result.folder} is already complete (same command, same parameters)")
    else:
        print(
            f"wrote {result.folder}: {summary['meshes']} meshes of {summary['objects']} objects "
            f"({summary['vertices']} vertices, {summary['triangles']} triangles; {', '.join(summary['formats'])})\n"
            f"  {result.run['blocks_processed']} blocks processed, {result.run['blocks_skipped']} skipped, "
            f"{result.run['seconds']:.1f} s"
        )
    if "neuroglancer" in summary["formats"]:
        print(f"  neuroglancer: add precomputed://<URL of {result.folder / 'neuroglancer'}> to the segmentation layer")
