"""Subcommands of `incasem-like`: each module defines `register(subparsers)` and imports its stage lazily."""

import argparse


def formatter(prog: str) -> argparse.HelpFormatter:
    return argparse.RawDescriptionHelpFormatter(prog, max_help_position=32)


def add_blockwise_options(parser: argparse.ArgumentParser, workers: int | None = 1, workers_default: str = "") -> None:
    """--workers, --overwrite, --quiet and the cluster options, shared by every blockwise command
    (`workers_default` describes a default of None that the command resolves)."""
    parser.add_argument(
        "--workers",
        type=int,
        default=workers,
        metavar="N",
        help=f"worker processes, or cluster jobs (default {workers_default or workers})",
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="replace an existing output (otherwise it is never touched)"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    # values stay strings here: `launcher_from_args` validates them, so a bad one is reported in one line
    cluster = parser.add_argument_group(
        "cluster execution",
        "Run each worker as a SLURM or LSF batch job (sbatch --wait / bsub -K); the scheduler stays on this "
        "machine and the workers connect back to it over TCP. Job options apply to each worker job.",
    )
    cluster.add_argument("--cluster", metavar="KIND", help="local (default), slurm or lsf")
    cluster.add_argument(
        "--cluster-config",
        metavar="FILE",
        help="YAML file with these settings (keys cluster, gpus, cpus, memory, time_limit, queue, account, "
        "scheduler_args, scheduler_host, max_restarts); options given here override it",
    )
    cluster.add_argument("--gpus", metavar="N", help="GPUs per job")
    cluster.add_argument("--cpus", metavar="N", help="CPU cores per job, also the worker's threads (default 1)")
    cluster.add_argument("--memory", metavar="SIZE", help="memory per job: 16G, 4000M, or MB without a unit")
    cluster.add_argument("--time-limit", metavar="TIME", help="wall time per job: minutes, or [D-]H:MM:SS")
    cluster.add_argument("--queue", "--partition", metavar="NAME", help="SLURM partition or LSF queue")
    cluster.add_argument("--account", metavar="NAME", help="SLURM account or LSF project charged")
    cluster.add_argument(
        "--scheduler-args",
        metavar="ARGS",
        help="more sbatch/bsub options, split as a shell would but never expanded, "
        "e.g. --scheduler-args='--qos=high --constraint=a100'",
    )
    cluster.add_argument(
        "--scheduler-host",
        metavar="HOST",
        help="address the workers connect to (default: 127.0.0.1 for local; for clusters this machine's name, "
        "or its default-route address when the name resolves to loopback)",
    )
    cluster.add_argument(
        "--max-restarts", metavar="N", help="jobs or processes started to replace lost workers, at most (default 10)"
    )


def launcher_from_args(args: argparse.Namespace):
    """The launcher the cluster options (over --cluster-config) describe; bad ones raise `UserError`."""
    from incasem_like.blockwise.cluster import ClusterSettings, cluster_settings

    options = {key: getattr(args, key) for key in ClusterSettings.model_fields}
    return cluster_settings(options, args.cluster_config).launcher()


def add_roi_option(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument(
        "--roi",
        type=int,
        nargs=6,
        metavar=("OZ", "OY", "OX", "SZ", "SY", "SX"),
        help=f"{what}: offset and shape in voxels",
    )


def one_or_three(value: int | list[int] | None, flag: str) -> int | tuple[int, int, int] | None:
    """The value of a `nargs="+"` option taking one number (the same along z, y and x) or three (z y x)."""
    if value is None or isinstance(value, int):
        return value
    if len(value) == 1:
        return value[0]
    if len(value) == 3:
        return (value[0], value[1], value[2])
    from incasem_like.core.errors import UserError

    raise UserError(f"{flag} {' '.join(map(str, value))}: give one value, or three (z y x)")


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


def execution_from_args(args: argparse.Namespace):
    """How the command runs: the blockwise options it has (workers, cluster, threads), --overwrite, --resume and
    --quiet."""
    from incasem_like.workflow.step import Execution

    return Execution(
        workers=getattr(args, "workers", None),
        launcher=launcher_from_args(args) if hasattr(args, "cluster") else None,
        threads=getattr(args, "threads", None),
        overwrite=getattr(args, "overwrite", False),
        resume=getattr(args, "resume", False),
        progress=not getattr(args, "quiet", False),
    )


def run_command(step, args: argparse.Namespace) -> None:
    """Run the command's step as its options say, recording it with its outputs (see `workflow.step`)."""
    from incasem_like.workflow.step import run_step

    run_step(step, execution_from_args(args))
