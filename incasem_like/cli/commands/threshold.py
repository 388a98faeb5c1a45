"""`incasem-like threshold`: re-threshold a stored probability map without predicting again."""

import argparse
import textwrap

from incasem_like.cli.commands import (
    add_block_options,
    add_blockwise_options,
    add_roi_option,
    formatter,
    roi_arguments,
    run_command,
)
from incasem_like.cli.commands.mask import add_max_span_option


def add_clean_up_options(parser: argparse.ArgumentParser, from_model: bool = False) -> None:
    """--min-object-voxels, --min-hole-voxels and --max-span of a segmentation's clean-up; `from_model`: their
    default is the model's recommendation (see `clean_up_arguments`)."""
    default, note = (None, "the model's recommendation, else 0 = off") if from_model else (0, "0 = off")
    for option, what in (("--min-object-voxels", "remove objects"), ("--min-hole-voxels", "then fill holes")):
        parser.add_argument(
            option, type=int, default=default, metavar="N", help=f"{what} smaller than N voxels (default: {note})"
        )
    add_max_span_option(parser)


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "threshold",
        help="probabilities (uint8) -> segmentation (0/1) at another threshold",
        description=textwrap.dedent(
            """\
            Binary segmentation of a probability dataset written by predict (uint8, 0..255 = 0..1): 1 where
            probability > --threshold, then optionally objects smaller than --min-object-voxels removed and holes
            smaller than --min-hole-voxels filled (face connectivity; blockwise with the context that makes it
            equal to the whole volume's result). With the prediction's own threshold and clean-up it reproduces
            predict's segmentation exactly."""
        ),
        epilog=textwrap.dedent(
            """\
            examples:
              incasem-like threshold cell.zarr/volumes/predictions/run1/mito/probabilities \\
                  cell.zarr/volumes/predictions/run1/mito/segmentation_0.7 --threshold 0.7
              incasem-like threshold cell.zarr/volumes/predictions/run1/mito/probabilities \\
                  cell.zarr/volumes/predictions/run1/mito/segmentation_clean --min-object-voxels 2000"""
        ),
        formatter_class=formatter,
    )
    parser.add_argument("input", metavar="PROB", help="probability dataset (uint8)")
    parser.add_argument("output", metavar="OUT", help="output dataset")
    parser.add_argument(
        "--threshold", type=float, default=0.5, metavar="T", help="foreground: probability > T (default 0.5)"
    )
    add_clean_up_options(parser)
    add_block_options(parser, block=256)
    add_roi_option(parser, "only this region of PROB")
    add_blockwise_options(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> None:
    from incasem_like.stages.threshold import CleanUp
    from incasem_like.workflow.steps import ThresholdStep

    step = ThresholdStep(
        input=args.input,
        output=args.output,
        threshold=args.threshold,
        clean_up=CleanUp(
            min_object_voxels=args.min_object_voxels, min_hole_voxels=args.min_hole_voxels, max_span=args.max_span
        ),
        block=args.block,
        chunk=args.chunk,
        **roi_arguments(args),
    )
    run_command(step, args)
