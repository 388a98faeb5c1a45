"""`incasem-like finetune`: continue a trained model on a new cell's annotated block."""

import argparse
import textwrap

from incasem_like.cli.commands import formatter, run_command
from incasem_like.cli.commands.train import add_training_options


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "finetune",
        help="fine-tune a trained model on a new cell's annotated block",
        description=textwrap.dedent(
            """\
            Load a checkpoint's weights (the config's network must have its architecture), train on the
            config's training cells (the new cell's annotated block) with the same augmentation and loss, and
            validate on the config's validation ROIs (held-out ground truth of that cell) before training and
            every validate_every iterations. Reports F1 before and after and the best iteration."""
        ),
        epilog=textwrap.dedent(
            """\
            examples:
              incasem-like finetune my_cell.yaml --from runs/mito/checkpoints/iteration_00040000.pt
              incasem-like finetune my_cell.yaml --from mito.pt --iterations 5000 --with-optimizer
              incasem-like finetune configs/training/finetune_cell_mito.yaml --from bundled:mito"""
        ),
        formatter_class=formatter,
    )
    add_training_options(parser)
    parser.add_argument(
        "--from",
        dest="checkpoint",
        required=True,
        metavar="CHECKPOINT",
        help="checkpoint to start from: a file, a finished run's folder (its best checkpoint) or bundled:mito",
    )
    parser.add_argument(
        "--with-optimizer", action="store_true", help="also continue the checkpoint's Adam state (default: fresh)"
    )
    parser.set_defaults(run=run, resume_option="--overwrite")


def run(args: argparse.Namespace) -> None:
    from incasem_like.workflow.steps import FinetuneStep

    step = FinetuneStep(
        config=args.config, iterations=args.iterations, checkpoint=args.checkpoint, with_optimizer=args.with_optimizer
    )
    run_command(step, args)
