"""`incasem-like report`: per-dataset summaries and plots of a cell's results as an HTML page and a JSON file."""

import argparse
import textwrap

from incasem_like.cli.commands import formatter, run_command


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "report",
        help="a cell's results summarised: counts, volumes, volume fractions, histograms, slice overlays (HTML)",
        description=textwrap.dedent(
            """\
            Summarise every segmentation, label and object-id dataset of a container (or those named with
            --datasets): foreground volume (nm^3) and, with --mask, the volume fraction of the cell; for object
            ids written by `incasem-like objects` also the object count, total, mean and median object volume,
            the surface-to-volume ratio and histograms of the per-object measures (volume, surface-to-volume,
            sphericity, equivalent diameter, axis lengths, skeleton length, distance to the cell boundary);
            and a slice overlay of raw (--raw, else volumes/raw_clahe or volumes/raw) and labels.
            Writes OUT/report.html (open it in a browser), OUT/report.json and the images, all at once when
            complete. Voxels are counted slab by slab: a whole cell never sits in memory."""
        ),
        epilog=textwrap.dedent(
            """\
            examples:
              incasem-like report cell_6.zarr --mask volumes/masks/cell
              incasem-like report cell_6.zarr --datasets volumes/predictions/run1/mito/segmentation_objects \\
                  --out cell_6_mito_report"""
        ),
        formatter_class=formatter,
    )
    parser.add_argument("container", metavar="CONTAINER", help="the cell's zarr container")
    parser.add_argument("--out", metavar="DIR", help="report folder (default: CONTAINER's name + _report, beside it)")
    parser.add_argument("--datasets", nargs="+", default=[], metavar="NAME", help="report these datasets only")
    parser.add_argument("--mask", metavar="NAME", help="cell mask dataset in the container (volume fractions)")
    parser.add_argument("--raw", metavar="NAME", help="raw dataset of the overlays (default: raw_clahe, else raw)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing report folder")
    parser.add_argument("--quiet", action="store_true", help="no progress output")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> None:
    from incasem_like.workflow.steps import ReportStep

    step = ReportStep(container=args.container, out=args.out, datasets=args.datasets, mask=args.mask, raw=args.raw)
    run_command(step, args)
