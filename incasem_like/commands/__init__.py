"""Subcommands of `incasem-like`: each module defines `register(subparsers)` and imports its stage lazily."""

import argparse


def formatter(prog: str) -> argparse.HelpFormatter:
    return argparse.RawDescriptionHelpFormatter(prog, max_help_position=32)


def add_blockwise_options(parser: argparse.ArgumentParser, workers: int | None = 1, workers_default: str = "") -> None:
    """--workers, --overwrite and --quiet, shared by every blockwise command (`workers_default` describes a
    default of None that the command resolves)."""
    parser.add_argument(
        "--workers",
        type=int,
        default=workers,
        metavar="N",
        help=f"worker processes (default {workers_default or workers})",
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="replace an existing output (otherwise it is never touched)"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def add_roi_option(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument(
        "--roi",
        type=int,
        nargs=6,
        metavar=("OZ", "OY", "OX", "SZ", "SY", "SX"),
        help=f"{what}: offset and shape in voxels",
    )


def roi_arguments(args: argparse.Namespace) -> dict:
    """The stage fields of --roi: `roi_offset` and `roi_shape` (None without --roi)."""
    return {
        "roi_offset": tuple(args.roi[:3]) if args.roi else None,
        "roi_shape": tuple(args.roi[3:]) if args.roi else None,
    }


def add_block_options(parser: argparse.ArgumentParser, block: int = 256, of: str = "") -> None:
    """--block and --chunk of a stage that writes one dataset (`of` says whose voxels count, e.g. "output ")."""
    parser.add_argument(
        "--block",
        type=int,
        default=block,
        metavar="N",
        help=f"block edge in {of}voxels, a multiple of --chunk (default {block})",
    )
    parser.add_argument(
        "--chunk", type=int, default=128, metavar="N", help="output zarr chunk edge in voxels (default 128)"
    )


def run_and_report(stage, args: argparse.Namespace) -> dict:
    """Run a blockwise stage with the shared options and print what it wrote."""
    from incasem_like.blockwise.runner import run_stage
    from incasem_like.datasets import open_dataset

    summary = run_stage(stage, workers=args.workers, overwrite=args.overwrite, progress=not args.quiet)
    if summary.get("already_complete"):
        print(f"{summary['output']} is already complete (same command, same parameters); nothing to do")
        return summary
    array = open_dataset(summary["output"])
    print(
        f"wrote {summary['output']}: {tuple(array.shape)} {array.dtype}, voxel size {tuple(array.voxel_size)} nm, "
        f"offset {tuple(array.offset)} nm\n"
        f"  {summary['blocks_processed']} blocks processed, {summary['blocks_skipped']} skipped (already done), "
        f"{summary['seconds']:.1f} s, {summary['voxels_per_second'] / 1e6:.1f} M voxels/s"
    )
    return summary
