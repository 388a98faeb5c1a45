"""`incasem-like predict`: a trained model over a cell -> probabilities and segmentation datasets."""

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
from incasem_like.cli.commands.threshold import add_clean_up_options


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
        "--organelle", metavar="NAME", help="the organelle to predict: a checkpoint trained for another is warned about"
    )
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
        "downsampling factor; the pass input is the smallest valid one that reaches it; default 128 on a CPU and 256 "
        "on a GPU, or for a network that does not pool along z 2 256 256 on a CPU, 16 256 256 on a GPU)",
    )
    parser.add_argument(
        "--batch",
        type=int,
        metavar="N",
        help="passes (test-time variants included) per network forward; results are bit-identical for a given "
        "device, precision and batch (default: about 32 M input voxels on a GPU; on a CPU a pass's variants)",
    )
    parser.add_argument(
        "--io-threads",
        type=int,
        default=2,
        metavar="N",
        help="reader, decoder and writer threads per worker (default 2; on a GPU node 8, with --block 512, keep the "
        "GPU busy)",
    )
    parser.add_argument("--strict", action="store_true", help="refuse raw whose voxel size differs from training's")
    add_block_options(parser, block=256)
    add_blockwise_options(parser, workers=None, workers_default="one per visible GPU, else 1")
    parser.set_defaults(run=run, field_flags={"output": "--out"})


def run(args: argparse.Namespace) -> None:
    from incasem_like.workflow.steps import PredictStep

    step = PredictStep(
        checkpoint=args.checkpoint,
        raw=args.raw,
        output=args.out,
        organelle=args.organelle,
        threshold=args.threshold,
        tta=args.tta,
        min_object_voxels=args.min_object_voxels,
        min_hole_voxels=args.min_hole_voxels,
        max_span=args.max_span,
        device=args.device,
        precision=args.precision,
        step=args.step,
        batch=args.batch,
        io_threads=args.io_threads,
        strict=args.strict,
        block=args.block,
        chunk=args.chunk,
        **roi_arguments(args),
    )
    run_command(step, args)
