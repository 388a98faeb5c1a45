"""`incasem-like rescale`: float or wide-integer images -> uint8/uint16 by recorded percentiles."""

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


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "rescale",
        help="float32/int8/int16/uint16 images -> uint8 or uint16 (percentiles -> full range)",
        description=textwrap.dedent(
            """\
            Rescale an image dataset (float32 tomograms, int8/int16 MRC data, 16-bit images) to uint8 or
            uint16, blockwise and resumable, for CLAHE and models trained on unsigned data. The LOW and HIGH
            percentiles of the whole dataset (or of --roi) map to 0 and the dtype's maximum, linearly; values
            beyond are clipped.
            The percentiles come from a histogram of every voxel (exact for integers, 65536 bins between the
            minimum and maximum for floats) computed before any block is written; the values they give are
            recorded in the output, with the rule, so a resumed run and `predict` see the same rule. --range
            maps given values instead (e.g. those recorded for another tomogram). NaN or infinity is an
            error."""
        ),
        epilog=textwrap.dedent(
            """\
            examples:
              incasem-like rescale tomo.zarr/volumes/raw_float tomo.zarr/volumes/raw
              incasem-like rescale tomo.zarr/volumes/raw_float tomo.zarr/volumes/raw --percentiles 1 99
              incasem-like rescale tomo2.zarr/volumes/raw_float tomo2.zarr/volumes/raw --range -3.2 4.1"""
        ),
        formatter_class=formatter,
    )
    parser.add_argument("input", metavar="IN", help="image dataset, e.g. tomo.zarr/volumes/raw_float")
    parser.add_argument("output", metavar="OUT", help="output dataset, e.g. tomo.zarr/volumes/raw")
    parser.add_argument("--dtype", choices=("uint8", "uint16"), default="uint8", help="output dtype (default uint8)")
    parser.add_argument(
        "--percentiles",
        type=float,
        nargs=2,
        default=(0.5, 99.5),
        metavar=("LOW", "HIGH"),
        help="percentiles (0-100) mapped to 0 and the dtype's maximum (default 0.5 99.5)",
    )
    parser.add_argument(
        "--range", type=float, nargs=2, metavar=("LOW", "HIGH"), help="map these values instead of percentiles"
    )
    add_block_options(parser)
    add_roi_option(parser, "rescale only this region (its percentiles)")
    add_blockwise_options(parser)
    parser.set_defaults(run=run, field_flags={"value_range": "--range", "input": "IN", "output": "OUT"})


def run(args: argparse.Namespace) -> None:
    from incasem_like.workflow.steps import RescaleStep

    step = RescaleStep(
        input=args.input,
        output=args.output,
        dtype=args.dtype,
        percentiles=tuple(args.percentiles),
        value_range=tuple(args.range) if args.range else None,
        block=args.block,
        chunk=args.chunk,
        **roi_arguments(args),
    )
    run_command(step, args)
