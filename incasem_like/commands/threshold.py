"""`incasem-like threshold`: re-threshold a stored probability map without predicting again."""

import argparse
import textwrap

from incasem_like.commands import (
    add_block_options,
    add_blockwise_options,
    add_roi_option,
    formatter,
    roi_arguments,
    run_and_report,
)


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "threshold",
        help="probabilities (uint8) -> segmentation (0/1) at another threshold",
        description=textwrap.dedent(
            """\
            Binary segmentation of a probability dataset written by predict (uint8, 0..255 = 0..1): 1 where
            probability > --threshold. At the prediction's own threshold it reproduces predict's segmentation
            exactly."""
        ),
        epilog=textwrap.dedent(
            """\
            examples:
              incasem-like threshold cell.zarr/volumes/predictions/run1/mito/probabilities \\
                  cell.zarr/volumes/predictions/run1/mito/segmentation_0.7 --threshold 0.7"""
        ),
        formatter_class=formatter,
    )
    parser.add_argument("input", metavar="PROB", help="probability dataset (uint8)")
    parser.add_argument("output", metavar="OUT", help="output dataset")
    parser.add_argument(
        "--threshold", type=float, default=0.5, metavar="T", help="foreground: probability > T (default 0.5)"
    )
    add_block_options(parser, block=256)
    add_roi_option(parser, "only this region of PROB")
    add_blockwise_options(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> None:
    from incasem_like.threshold import ThresholdStage

    stage = ThresholdStage(
        input=args.input,
        output=args.output,
        threshold=args.threshold,
        block=args.block,
        chunk=args.chunk,
        **roi_arguments(args),
    )
    run_and_report(stage, args)
