"""`incasem-like labels clean|dilate|metric-mask|interpolate`: label preparation with per-organelle defaults, and
dense labels from labels annotated on some slices only."""

import argparse

from incasem_like.cli.commands import (
    add_block_options,
    add_blockwise_options,
    add_roi_option,
    formatter,
    one_or_three,
    roi_arguments,
    run_command,
)
from incasem_like.cli.commands.mask import add_max_span_option

EXAMPLES = """\
examples:
  incasem-like labels clean cell_6.zarr/volumes/labels/mito cell_6.zarr/volumes/labels/mito_clean --organelle mito
  incasem-like labels clean cell_6.zarr/volumes/labels/er cell_6.zarr/volumes/labels/er_clean --organelle er \\
      --min-hole-voxels 50000
  incasem-like labels dilate cell_6.zarr/volumes/labels/mito_clean cell_6.zarr/volumes/labels/mito_dilated \\
      --organelle mito
  incasem-like labels metric-mask cell_6.zarr/volumes/labels/mito cell_6.zarr/volumes/metric_masks/mito \\
      --organelle mito --workers 8
  incasem-like labels interpolate cell_6.zarr/volumes/labels/mito_sparse cell_6.zarr/volumes/labels/mito \\
      --raw cell_6.zarr/volumes/raw --annotated-slices 0:165:20 --workers 4"""

OPERATIONS = {
    "clean": (
        "remove small objects / fill small holes",
        "Remove objects smaller than --min-object-voxels and then fill holes smaller than --min-hole-voxels (face\n"
        "connectivity; 0 = off). Defaults: mito and golgi objects < 27 voxels, er holes < 20000 voxels.\n"
        "So that the result does not depend on the blocks, holes and objects also count as small only if they\n"
        "span at most --max-span voxels along every axis (no restriction for sizes up to 65 voxels).",
    ),
    "dilate": (
        "bias correction: dilate the labels",
        "Dilate the labels by a ball of --voxels voxels (bias correction of the annotation). Defaults: mito 1,\n"
        "golgi 3, others 0.",
    ),
    "metric-mask": (
        "mask of the voxels F1 counts (1 = counts)",
        "Write the mask of voxels that count for F1: 1 outside the exclusion zone dilation(labels, ball(D)) minus\n"
        "erosion(labels, ball(E)), 0 inside it. Defaults (D/E): mito 4/4, golgi 2/2, er 1/1, ccp and\n"
        "nuclear_pore 3/1.",
    ),
}

INTERPOLATE = (
    "dense labels from labels annotated on some slices",
    "Fill the slices between annotated slices (--annotated-slices along --axis) from the raw image: shape\n"
    "interpolation of the two annotated slices around a gap (signed distances, linear) gives a prior; within a band\n"
    "around its boundary (--band voxels, growing by --growth per voxel of distance to the nearer annotated slice) a\n"
    "random walker on the image decides (edge weights exp(-beta * (difference / std)^2), image smoothed in-plane by\n"
    "--sigma); --method shape keeps the prior alone. Annotated slices are copied (foreground = labels > 0).\n"
    "Writes OUT (uint8 0/1) and OUT_sure (or --sure): 1 = sure, 0 = unsure (walker probability within --margin of\n"
    "0.5, and every slice before the first or after the last annotated slice, where OUT is 0). OUT_sure follows\n"
    "the mask convention (1 = counts), so a training cell takes it as its `annotated` mask: unsure voxels get no\n"
    "weight and count nowhere.\n"
    "Exact blockwise: blocks are slabs of --block slices along --axis; each gap is solved whole.",
)

COMMON = (
    "All operations read integer labels (foreground = labels > 0) and write uint8 0/1, blockwise and resumable;\n"
    "outside the dataset the labels are 0. Defaults come from configs/organelles/<organelle>.yaml (or\n"
    "$INCASEM_LIKE_CONFIGS/organelles/<organelle>.yaml); options given on the command line replace them."
)


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "labels",
        help="label preparation: clean, dilate, metric-mask (per-organelle defaults), interpolate",
        description="Label preparation with the ASEM method's per-organelle defaults (clean, dilate, metric-mask),\n"
        "and dense labels from labels annotated on a few slices (interpolate).\n\n"
        + "\n".join(
            f"  {name:12} {summary}" for name, (summary, _) in {**OPERATIONS, "interpolate": INTERPOLATE}.items()
        )
        + "\n\n"
        + COMMON,
        epilog=EXAMPLES,
        formatter_class=formatter,
    )
    operations = parser.add_subparsers(title="operations", metavar="OPERATION", required=True)
    for name, (summary, description) in OPERATIONS.items():
        sub = operations.add_parser(
            name,
            help=summary,
            description=description + "\n\n" + COMMON,
            epilog=_examples_for(name),
            formatter_class=formatter,
        )
        sub.add_argument("input", metavar="IN", help="labels dataset, e.g. cell_6.zarr/volumes/labels/mito")
        sub.add_argument("output", metavar="OUT", help="output dataset")
        sub.add_argument(
            "--organelle",
            metavar="NAME",
            help="take the defaults from configs/organelles/NAME.yaml (mito, er, golgi, nuclear_pore, ccp)",
        )
        if name == "clean":
            sub.add_argument("--min-object-voxels", type=int, metavar="N", help="remove objects smaller than N")
            sub.add_argument("--min-hole-voxels", type=int, metavar="N", help="fill holes smaller than N")
            add_max_span_option(sub)
        elif name == "dilate":
            sub.add_argument("--voxels", type=int, metavar="N", help="dilation radius in voxels")
        else:
            for flag, what in (("--dilation", "dilation"), ("--erosion", "erosion")):
                sub.add_argument(
                    flag,
                    type=int,
                    nargs="+",
                    metavar="R",
                    help=f"exclusion zone: {what} radius in voxels, one (a ball) or three (z y x: an ellipsoid, e.g. "
                    "0 2 2 for sections of anisotropic data)",
                )
        add_block_options(sub)
        add_roi_option(sub, "process only this region")
        add_blockwise_options(sub)
        sub.set_defaults(run=run, operation=name, field_flags=PARAMETERS[name])
    _register_interpolate(operations)


def _register_interpolate(operations) -> None:
    summary, description = INTERPOLATE
    sub = operations.add_parser(
        "interpolate",
        help=summary,
        description=description,
        epilog=_examples_for("interpolate"),
        formatter_class=formatter,
    )
    sub.add_argument("input", metavar="SPARSE_LABELS", help="labels annotated on some slices (integer, > 0 = object)")
    sub.add_argument("output", metavar="OUT", help="output dataset (0/1); OUT_sure beside it")
    sub.add_argument("--raw", required=True, metavar="RAW", help="the raw image, on the labels' voxel grid")
    sub.add_argument(
        "--annotated-slices",
        required=True,
        metavar="SLICES",
        help="the annotated slices along --axis: START:STOP:STEP (e.g. 0:165:20) or a comma list (0,20,45)",
    )
    sub.add_argument("--axis", choices=("z", "y", "x"), default="z", help="the axis the slices cut (default z)")
    sub.add_argument("--sure", metavar="DATASET", help="where the sure mask goes (default OUT_sure)")
    sub.add_argument(
        "--method",
        choices=("random-walker", "shape"),
        default="random-walker",
        help="random-walker (default) or shape (shape interpolation alone)",
    )
    for flag, default, what in (
        ("--beta", 40.0, "edge sharpness of the random walker"),
        ("--sigma", 1.0, "in-plane smoothing of the image, in voxels"),
        ("--band", 3.0, "half-width of the band the walker decides, in voxels, at the annotated slices"),
        ("--growth", 0.5, "the band's growth per voxel of distance to the nearer annotated slice"),
        ("--margin", 0.35, "unsure where the walker's probability lies within this of 0.5"),
    ):
        sub.add_argument(flag, type=float, default=default, metavar="V", help=f"{what} (default {default:g})")
    add_block_options(sub, of="slices along --axis; ")
    add_blockwise_options(sub)
    sub.set_defaults(
        run=run_interpolate,
        operation="interpolate",
        field_flags={"input": "SPARSE_LABELS", "annotated": "--annotated-slices"},
    )


def _examples_for(name: str) -> str:
    """The examples of one operation (an example may continue on indented lines)."""
    lines, keep = ["examples:"], False
    for line in EXAMPLES.splitlines()[1:]:
        if line.startswith("  incasem-like "):
            keep = line.startswith(f"  incasem-like labels {name} ")
        if keep:
            lines.append(line)
    return "\n".join(lines)


#: per operation: stage parameter -> (command-line option, attribute of the parsed arguments)
PARAMETERS = {
    "clean": {"min_object_voxels": "--min-object-voxels", "min_hole_voxels": "--min-hole-voxels"},
    "dilate": {"voxels": "--voxels"},
    "metric-mask": {"dilation_voxels": "--dilation", "erosion_voxels": "--erosion"},
}


def run(args: argparse.Namespace) -> None:
    from incasem_like.workflow.steps import STEP_TYPES

    options = PARAMETERS[args.operation]
    parameters = {field: getattr(args, flag.removeprefix("--").replace("-", "_")) for field, flag in options.items()}
    if args.operation == "metric-mask":
        parameters = {field: one_or_three(value, options[field]) for field, value in parameters.items()}
    extra = {"max_span": args.max_span} if args.operation == "clean" else {}
    step = STEP_TYPES[f"labels {args.operation}"].model_validate(
        {
            "input": args.input,
            "output": args.output,
            "organelle": args.organelle,
            **parameters,
            **extra,
            "block": args.block,
            "chunk": args.chunk,
            **roi_arguments(args),
        }
    )
    run_command(step, args)


def run_interpolate(args: argparse.Namespace) -> None:
    from incasem_like.workflow.steps import LabelsInterpolateStep

    fields = ("input", "output", "raw", "axis", "sure", "method", "beta", "sigma", "band", "growth", "margin")
    step = LabelsInterpolateStep.model_validate(
        {
            **{field: getattr(args, field) for field in fields},
            "annotated": args.annotated_slices,
            "block": args.block,
            "chunk": args.chunk,
        }
    )
    run_command(step, args)
