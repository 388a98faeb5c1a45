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
from incasem_like.commands.mask import add_max_span_option


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
    parser.add_argument(
        "--min-object-voxels", type=int, default=0, metavar="N", help="remove objects smaller than N voxels (0: off)"
    )
    parser.add_argument(
        "--min-hole-voxels", type=int, default=0, metavar="N", help="then fill holes smaller than N voxels (0: off)"
    )
    add_max_span_option(parser)
    add_block_options(parser, block=256)
    add_roi_option(parser, "only this region of PROB")
    add_blockwise_options(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> None:
    from incasem_like.threshold import CleanUp, ThresholdStage

    stage = ThresholdStage(
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
    run_and_report(stage, args)
