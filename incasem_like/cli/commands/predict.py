"""`incasem-like predict`: a trained model over a cell -> probabilities and segmentation datasets."""

import argparse
import textwrap

from incasem_like.cli.commands import add_block_options, add_blockwise_options, add_roi_option, formatter, roi_arguments
from incasem_like.cli.commands.threshold import add_clean_up_options, clean_up_arguments


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "predict",
        help="blockwise 3D U-Net prediction -> probabilities (uint8) and segmentation (0/1)",
        description=textwrap.dedent(
            """\
            Predict one organelle over RAW (or --roi of it) with a trained checkpoint, blockwise on daisy
            workers that each load the model once. Writes OUT/probabilities (uint8, 0..255 = 0..1) and
            OUT/segmentation (uint8 1 where probability > --threshold) with RAW's voxel size and offset and
            the model's provenance in the attributes. The whole ROI is predicted, borders included (input
            mirrored beyond the data). Outputs are bit-identical whatever --workers, --block, the block order
            or an interruption: rerun the same command to resume.

            --tta averages each pass over its mirrored (and x-y transposed) variants before quantization;
            --min-object-voxels / --min-hole-voxels clean the segmentation up (written from the stored
            probabilities by the threshold stage, exactly as on the whole volume). An exported model records
            the threshold, test-time augmentation and clean-up it was chosen with: they are the defaults."""
        ),
        epilog=textwrap.dedent(
            """\
            examples:
              incasem-like predict --checkpoint runs/mito/checkpoints/iteration_00100000.pt \\
                  --raw cell_6.zarr/volumes/raw_clahe --out cell_6.zarr/volumes/predictions/run1/mito
              incasem-like predict --checkpoint bundled:mito --raw cell.zarr/volumes/raw_clahe \\
                  --out cell.zarr/volumes/predictions/cpu/mito --device cpu --workers 2 --roi 0 0 0 64 256 256
              incasem-like predict --checkpoint runs/finetune_cell_mito --raw cell.zarr/volumes/raw_clahe \\
                  --out cell.zarr/volumes/predictions/finetuned/mito
              incasem-like predict --checkpoint bundled:mito --raw cell.zarr/volumes/raw_clahe \\
                  --out cell.zarr/volumes/predictions/plain/mito --tta none --min-object-voxels 0
              incasem-like threshold cell.zarr/volumes/predictions/run1/mito/probabilities \\
                  cell.zarr/volumes/predictions/run1/mito/segmentation_0.7 --threshold 0.7"""
        ),
        formatter_class=formatter,
    )
    parser.add_argument(
        "--checkpoint",
        required=True,
        metavar="CKPT",
        help="checkpoint written by train/finetune, a finished run's folder (its best checkpoint by validation F1) "
        "or bundled:mito (the model shipped with the package)",
    )
    parser.add_argument("--raw", required=True, metavar="RAW", help="raw dataset, e.g. cell.zarr/volumes/raw_clahe")
    parser.add_argument(
        "--out",
        required=True,
        metavar="OUT",
        help="output group, e.g. cell.zarr/volumes/predictions/RUN/mito (gets probabilities/ and segmentation/)",
    )
    add_roi_option(parser, "predict only this region of RAW")
    parser.add_argument(
        "--threshold",
        type=float,
        metavar="T",
        help="segmentation: probability > T (default: the threshold recorded with an exported model, else 0.5)",
    )
    parser.add_argument(
        "--tta",
        choices=("none", "mirror", "mirror+transpose"),
        help="test-time augmentation: the mirrors along every axis the network looks along (8 in 3D, 4 for a "
        "slice-wise network), with mirror+transpose each also with y and x swapped where their voxel sizes agree "
        "(default: what an exported model records, else none)",
    )
    add_clean_up_options(parser, from_model=True)
    parser.add_argument(
        "--device", choices=("auto", "cuda", "cpu"), default="auto", help="default: cuda if available, else cpu"
    )
    parser.add_argument(
        "--precision",
        choices=("auto", "fp32", "bf16"),
        default="auto",
        help="auto: bf16 autocast on GPUs that support it, float32 on CPU",
    )
    parser.add_argument(
        "--step",
        type=int,
        nargs="+",
        metavar="N",
        help="output voxels each network pass provides: one edge, or z y x (multiples of the network's "
        "downsampling factor; the pass input is the smallest valid one that reaches it; default 128, or for a "
        "network that does not pool along z 2 256 256 on a CPU, 16 256 256 on a GPU)",
    )
    parser.add_argument("--strict", action="store_true", help="refuse raw whose voxel size differs from training's")
    add_block_options(parser, block=256)
    add_blockwise_options(parser, workers=None, workers_default="one per visible GPU, else 1")
    parser.set_defaults(run=run, field_flags={"output": "--out"})


def _prepare_clean_up_output(stages: list, overwrite: bool) -> None:
    """Nothing is predicted if the clean-up would then refuse its output; with --overwrite, an existing
    segmentation goes now (it belongs to the probabilities about to be replaced, so must not look complete)."""
    from incasem_like.blockwise.runner import check_writable, refuse_if_running
    from incasem_like.core.errors import UserError
    from incasem_like.store.datasets import DatasetPath, remove_dataset

    threshold = stages[1]
    segmentation = DatasetPath.parse(threshold.output)
    if not segmentation.exists():
        return
    if overwrite:
        refuse_if_running(segmentation, str(segmentation))
        remove_dataset(segmentation)
    elif DatasetPath.parse(threshold.input).exists():
        check_writable(threshold)  # a resumable clean-up of this command passes
    else:
        raise UserError(
            f"{segmentation} already exists and was not written by this exact command; pass --overwrite to replace it"
        )


def run(args: argparse.Namespace) -> None:
    import torch

    from incasem_like.blockwise.launchers import LocalLauncher
    from incasem_like.cli.commands import launcher_from_args, run_and_report
    from incasem_like.core.errors import UserError
    from incasem_like.nn.checkpoints import resolve_checkpoint
    from incasem_like.nn.inference import select_device
    from incasem_like.stages.predict import (
        PredictStage,
        default_precision,
        prediction_stages,
        recommended_settings,
    )

    checkpoint = str(resolve_checkpoint(args.checkpoint))
    launcher = launcher_from_args(args)
    # cluster jobs decide `auto` on their nodes: this machine's GPUs say nothing about theirs
    on_this_machine = isinstance(launcher, LocalLauncher)
    device = select_device(args.device) if on_this_machine else args.device
    precision = default_precision(device) if on_this_machine and args.precision == "auto" else args.precision
    if args.step is not None and len(args.step) not in (1, 3):
        raise UserError(f"--step {' '.join(map(str, args.step))}: give one edge or three (z y x)")
    recommended = recommended_settings(checkpoint)
    clean_up = clean_up_arguments(args, recommended["clean_up"])
    stage = PredictStage(
        checkpoint=checkpoint,
        raw=args.raw,
        output=args.out,
        threshold=recommended["threshold"] if args.threshold is None else args.threshold,
        block=args.block,
        chunk=args.chunk,
        step=None if args.step is None else tuple(args.step * 3 if len(args.step) == 1 else args.step),
        tta=recommended["tta"] if args.tta is None else args.tta,
        device=device,
        precision=precision,
        strict=args.strict,
        **roi_arguments(args),
    )
    if args.workers is None:  # one worker per visible GPU, else one using all cores (one job on a cluster)
        args.workers = torch.cuda.device_count() if on_this_machine and device == "cuda" else 1
    stages = prediction_stages(stage, clean_up)
    if len(stages) > 1:
        _prepare_clean_up_output(stages, args.overwrite)
    for part in stages:
        run_and_report(part, args, launcher)
    print(
        f"  segmentation: {args.out.rstrip('/')}/segmentation (threshold {stage.threshold:g}, test-time "
        f"augmentation {stage.tta}"
        + (
            f", objects < {clean_up.min_object_voxels} removed, holes < {clean_up.min_hole_voxels} filled"
            if clean_up.active()
            else ""
        )
        + ")"
        + (f"; checkpoint: {checkpoint}" if checkpoint != args.checkpoint else "")
    )
