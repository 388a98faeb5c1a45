"""`incasem-like export-model`: a trained model for other tools (bioimage.io package, TorchScript, ONNX)."""

import argparse
import textwrap

from incasem_like.cli.commands import formatter, run_command


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "export-model",
        help="a trained model -> bioimage.io package (ilastik, deepImageJ, napari), TorchScript or ONNX",
        description=textwrap.dedent(
            """\
            Write a checkpoint (or a finished run's best) for other tools. bioimageio: a bioimage.io model
            package (zip) with the weights as a state dict and TorchScript, axes b c z y x with the voxel size,
            the normalization as preprocessing, a sigmoid, the context as the output's offset, test tensors
            the model makes from --test-raw, a cover, citations and --license; `bioimageio test OUT.zip`
            checks it, and `incasem-like predict --checkpoint OUT.zip` runs it blockwise. torchscript / onnx: the
            network alone, (N, 1, z, y, x) input normalized as in training -> foreground logits, for the one
            input shape printed (valid convolutions: the output is the context smaller per side)."""
        ),
        epilog=textwrap.dedent(
            """\
            examples:
              incasem-like export-model bundled:mito mito.zip
              incasem-like export-model runs/finetune_cell_mito mito_cell.zip --test-raw cell.zarr/volumes/raw_clahe
              incasem-like export-model incasem:model_checkpoint_100000 mito.onnx --format onnx"""
        ),
        formatter_class=formatter,
    )
    parser.add_argument(
        "checkpoint",
        metavar="RUN_OR_CHECKPOINT",
        help="a checkpoint, a finished run's folder, bundled:mito or incasem:PATH",
    )
    parser.add_argument("out", metavar="OUT", help="the file to write (OUT.zip for bioimageio)")
    parser.add_argument(
        "--format", choices=("bioimageio", "torchscript", "onnx"), default="bioimageio", help="default bioimageio"
    )
    parser.add_argument(
        "--test-raw",
        metavar="RAW",
        help="raw dataset whose centre makes the package's test tensors (default: the embedded Lucchi sample)",
    )
    parser.add_argument("--name", metavar="TEXT", help="the package's name (default: organelle and checkpoint)")
    parser.add_argument(
        "--license", default="CC-BY-4.0", metavar="SPDX", help="licence of the training data (default CC-BY-4.0)"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing OUT")
    parser.set_defaults(run=run, field_flags={"checkpoint": "RUN_OR_CHECKPOINT", "out": "OUT"})


def run(args: argparse.Namespace) -> None:
    from incasem_like.workflow.steps import ExportModelStep

    step = ExportModelStep(
        checkpoint=args.checkpoint,
        out=args.out,
        format=args.format,
        test_raw=args.test_raw,
        name=args.name,
        license=args.license,
    )
    run_command(step, args)
