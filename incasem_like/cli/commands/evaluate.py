"""`incasem-like evaluate`: precision, recall, F1, IoU and Dice of a prediction against labels, streamed."""

import argparse
import textwrap
from pathlib import Path

from incasem_like.cli.commands import add_roi_option, formatter, roi_arguments, run_command


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "evaluate",
        help="precision, recall, F1, IoU and Dice of a segmentation or probability map against labels",
        description=textwrap.dedent(
            """\
            Score a prediction against ground truth voxel by voxel, in one streaming pass over blocks of whole
            chunks (memory stays that of a few blocks, whatever the volume's size).

            Labels: foreground = label > 0. Voxels count only where --metric-mask and --mask (the cell mask) are
            > 0. The prediction is uint8: a segmentation (0/1) or a probability map (0..255 = 0..1, recognised by
            the kind predict records, or --probabilities). A probability map is scored at every threshold of
            --thresholds (foreground = probability > t, as incasem-like threshold segments) and the best
            threshold by F1 is marked. Dice equals F1 voxel-wise; IoU = TP / (TP + FP + FN).

            Labels and masks must have the prediction's voxel size and cover the evaluated region: the
            prediction's ROI, or --roi inside it."""
        ),
        epilog=textwrap.dedent(
            """\
            examples:
              incasem-like evaluate --prediction cell_6.zarr/volumes/predictions/run1/mito/segmentation \\
                  --labels cell_6.zarr/volumes/labels/mito --metric-mask cell_6.zarr/volumes/metric_masks/mito
              incasem-like evaluate --prediction cell_6.zarr/volumes/predictions/run1/mito/probabilities \\
                  --labels cell_6.zarr/volumes/labels/mito --mask cell_6.zarr/volumes/masks/cell \\
                  --thresholds 0.3:0.7:0.05 --json run1_mito.json"""
        ),
        formatter_class=formatter,
    )
    parser.add_argument(
        "--prediction", required=True, metavar="PRED", help="uint8 segmentation (0/1) or probabilities (0..255)"
    )
    parser.add_argument("--labels", required=True, metavar="LABELS", help="ground truth (integers, foreground > 0)")
    parser.add_argument("--metric-mask", metavar="M", help="voxels count only where M > 0 (the F1 exclusion zone)")
    parser.add_argument("--mask", metavar="CELL", help="voxels count only inside the cell mask (CELL > 0)")
    add_roi_option(parser, "evaluate only this region of PRED (from its first voxel)")
    parser.add_argument(
        "--probabilities", action="store_true", help="PRED is a probability map even if it records no such kind"
    )
    parser.add_argument(
        "--thresholds",
        metavar="SPEC",
        help="probability thresholds: START:STOP:STEP (STOP included) or T1,T2,... (default 0.05:0.95:0.05)",
    )
    parser.add_argument("--json", type=Path, metavar="OUT.json", help="also write the results (and histograms) here")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --json file")
    parser.add_argument("--threads", type=int, default=0, metavar="N", help="reading threads (default: all cores)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(run=run, field_flags={"json_file": "--json"})


def run(args: argparse.Namespace) -> None:
    from incasem_like.workflow.steps import EvaluateStep

    step = EvaluateStep(
        prediction=args.prediction,
        labels=args.labels,
        metric_mask=args.metric_mask,
        mask=args.mask,
        probabilities=args.probabilities,
        thresholds=args.thresholds,
        json_file=args.json and str(args.json),
        **roi_arguments(args),
    )
    run_command(step, args)
