"""`incasem-like train`: train one organelle's 3D U-Net from a YAML config."""

import argparse
import textwrap

from incasem_like.cli.commands import formatter, run_command


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
    parser.set_defaults(run=run, resume_option="--resume")


def run(args: argparse.Namespace) -> None:
    from incasem_like.workflow.steps import TrainStep

    run_command(TrainStep(config=args.config, iterations=args.iterations), args)
