"""`incasem-like pyramid`: OME-Zarr multiscale levels s1..sN inside a dataset's group."""

import argparse
import textwrap

from incasem_like.cli.commands import add_block_options, add_blockwise_options, formatter, launcher_from_args
from incasem_like.cli.commands.downsample import VALUE_RULES, add_kind_options


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "pyramid",
        help="multiscale levels s1..sN in a dataset's group, so neuroglancer shows it at every zoom",
        description="Write the levels s1..sN of a dataset's OME-Zarr multiscale pyramid, blockwise and resumable.\n\n"
        "Each level is 2x coarser than the one before and computed from it.\n\n"
        + VALUE_RULES.replace("FACTOR^3", "2x2x2").replace("the factor", "2")
        + "\n\n"
        + textwrap.dedent(
            """\
            A level is listed in the group's multiscales metadata only once it is complete, so an interrupted
            pyramid never looks finished; rerun the same command to resume it. Levels that exist are kept
            (asking for more levels adds only the missing ones); --overwrite recomputes s1..sN and drops coarser
            levels. The dataset's offset must be a multiple of the coarsest level's voxel size."""
        ),
        epilog=textwrap.dedent(
            """\
            examples:
              incasem-like pyramid cell_6.zarr/volumes/raw --levels 4 --workers 4
              incasem-like pyramid cell_6.zarr/volumes/labels/mito --levels 4
              incasem-like pyramid crop.zarr/volumes/raw --levels 2 --chunk 64 --block 64 --overwrite"""
        ),
        formatter_class=formatter,
    )
    parser.add_argument("dataset", metavar="DATASET", help="dataset (OME-Zarr group), e.g. cell_6.zarr/volumes/raw")
    parser.add_argument("--levels", required=True, metavar="N", help="coarsest level to have: s1..sN (N >= 1)")
    add_kind_options(parser)
    add_block_options(parser, block=128, of="output ")
    add_blockwise_options(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> None:
    from incasem_like.core.errors import UserError
    from incasem_like.core.geometry import nm_text
    from incasem_like.stages.downsample import build_pyramid, listed_levels, open_level, parse_int, resolve_kind
    from incasem_like.store.datasets import DatasetPath, open_dataset

    path = DatasetPath.parse(args.dataset)
    open_dataset(path)  # a missing or incomplete dataset is named before anything else
    levels = parse_int(args.levels, "--levels", minimum=1)
    if args.workers < 1:
        raise UserError(f"--workers {args.workers}: need at least one worker")
    launcher = launcher_from_args(args)

    def report(stage, summary: dict) -> None:
        level = open_level(path, stage.level)
        done = "already complete" if summary.get("already_complete") else f"{summary['seconds']:.1f} s"
        print(
            f"wrote {path}/s{stage.level}: {tuple(level.shape)} {level.dtype}, voxel size {nm_text(level.voxel_size)}"
            f"\n  {summary['blocks_processed']} blocks processed, {summary['blocks_skipped']} skipped "
            f"(already done), {done}"
        )

    written = build_pyramid(
        path,
        levels,
        resolve_kind(path, args.kind),
        block=args.block,
        chunk=args.chunk,
        workers=args.workers,
        overwrite=args.overwrite,
        progress=not args.quiet,
        on_level=report,
        launcher=launcher,
    )
    count = listed_levels(path)
    sizes = ", ".join(nm_text(open_level(path, k).voxel_size) for k in range(count))
    if not written:
        print(f"{path} already has levels s0..s{count - 1}; nothing to do (--overwrite recomputes them)")
    print(f"{path}: multiscales lists s0..s{count - 1}, voxel sizes {sizes}")
