"""`incasem-like demo`: the pipeline on the embedded sample data, offline, on the CPU."""

import argparse
import textwrap

from incasem_like.cli.commands import add_blockwise_options, formatter, launcher_from_args


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="run the pipeline on the embedded sample data (offline, CPU)",
        description=textwrap.dedent(
            """\
            The pipeline on the embedded sample (a 40 x 384 x 384 crop of the Lucchi FIB-SEM volume with its
            mitochondria labels, never trained on): TIFF slices -> OME-Zarr -> CLAHE -> metric mask ->
            mitochondria prediction with the bundled model -> F1, IoU, precision and recall against the labels
            over every voxel (and ASEM's F1 outside the exclusion zone); then the result is served to
            neuroglancer (Ctrl-C stops it; --no-view skips it). Rerunning resumes."""
        ),
        epilog="examples:\n  incasem-like demo\n  incasem-like demo --out /tmp/demo --workers 2 --no-view",
        formatter_class=formatter,
    )
    parser.add_argument(
        "--out", default="incasem_like_demo", metavar="DIR", help="output folder (default ./incasem_like_demo)"
    )
    parser.add_argument("--no-view", action="store_true", help="do not serve the result to neuroglancer at the end")
    add_blockwise_options(parser, workers=2)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> None:
    from incasem_like.workflow.demo import run_demo

    launcher = launcher_from_args(args)
    print("incasem-like demo: mitochondria in the embedded Lucchi sample, on the CPU", flush=True)
    result = run_demo(
        args.out, workers=args.workers, overwrite=args.overwrite, progress=not args.quiet, launcher=launcher
    )
    segmentation = result["segmentation"]
    scores, asem = segmentation["best"], segmentation["exclusion_zone"]["best"]
    print(
        f"mitochondria F1 {scores['f1']:.3f}, IoU {scores['iou']:.3f} (every voxel; precision "
        f"{scores['precision']:.3f}, recall {scores['recall']:.3f}) at the model's threshold {result['threshold']}, "
        f"test-time augmentation {result['tta']}; ASEM's F1 outside the exclusion zone {asem['f1']:.3f}"
    )
    print(
        "  (the sample is a crop of slices 125-164 of the Lucchi++ volume: the model's checkpoint and threshold "
        "were chosen on slices 125-144, so this is not a held-out figure; see incasem_like/nn/models/README.md)"
    )
    print(f"the sample cell and its prediction are in {result['container']}", flush=True)
    if not args.no_view:
        from incasem_like.workflow.step import Execution, run_step
        from incasem_like.workflow.steps import ViewStep

        run_step(ViewStep(container=str(result["container"])), Execution())
