"""`incasem-like train`: train one organelle's 3D U-Net from a YAML config."""

import argparse
import textwrap

from incasem_like.cli.commands import formatter


def add_training_options(parser: argparse.ArgumentParser) -> None:
    """Options `train` and `finetune` share."""
    parser.add_argument("config", metavar="CONFIG.yaml", help="training configuration (see configs/training/)")
    parser.add_argument("--iterations", type=int, metavar="N", help="train to iteration N (overrides the config)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing run in the config's run_dir")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train a 3D U-Net for one organelle (gunpowder augmentation, class-balanced BCE)",
        description=textwrap.dedent(
            """\
            Train one organelle's 3D U-Net as configured in CONFIG.yaml: random blocks from the training cells
            (rejection sampling on cell mask and foreground), mirror/transpose, elastic and intensity
            augmentation, class-balanced binary cross-entropy (metric exclusion zone and outside-cell voxels
            weigh 0), Adam. The run directory gets atomic checkpoints, TensorBoard scalars (training loss,
            validation loss and F1/precision/recall), zarr snapshots and summary.json naming the best checkpoint
            by validation F1. --resume continues exactly from the last checkpoint."""
        ),
        epilog=textwrap.dedent(
            """\
            examples:
              incasem-like train configs/training/lucchi_mito_cpu.yaml
              incasem-like train configs/training/mito.yaml --resume
              tensorboard --logdir runs/"""
        ),
        formatter_class=formatter,
    )
    add_training_options(parser)
    parser.add_argument("--resume", action="store_true", help="continue from the run's last checkpoint")
    parser.set_defaults(run=run)


def load(args: argparse.Namespace):
    from incasem_like.training.config import load_config

    return load_config(args.config, {"iterations": args.iterations} if args.iterations else None)


def report(summary: dict) -> None:
    best = summary["best"]
    timing = summary["timing"]
    print(
        f"trained {summary['organelle']} to iteration {summary['iterations']} on {summary['device']} in "
        f"{timing['wall_seconds'] / 60:.1f} min ({timing['iterations_per_second']} it/s, waiting for data "
        f"{timing['data_wait_fraction']:.0%})"
    )
    if timing["stopped_at_time_limit"]:
        print(
            "stopped at the time limit (max_minutes or time_budget_minutes); --resume continues towards the "
            "configured iterations"
        )
    if best:
        print(
            f"best validation F1 {best['f1']:.3f} (threshold {summary['threshold']}) at iteration {best['iteration']}: "
            f"{best['checkpoint']}"
        )
        swept = summary["best_at_swept_threshold"]
        print(f"  best over thresholds: F1 {swept['f1']:.3f} at {swept['threshold']} (iteration {swept['iteration']})")
    print(f"summary: {summary['run_dir']}/summary.json")


def run(args: argparse.Namespace) -> None:
    from incasem_like.training.train import train

    if args.resume and args.overwrite:
        from incasem_like.core.errors import UserError

        raise UserError("--resume and --overwrite exclude each other: continue the run or replace it")
    report(train(load(args), resume=args.resume, overwrite=args.overwrite, progress=not args.quiet))
