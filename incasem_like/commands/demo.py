"""`incasem-like demo`: the pipeline on the embedded sample data, offline, on the CPU."""

import argparse

from incasem_like.commands import add_blockwise_options, formatter


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="run the pipeline on the embedded sample data (offline, CPU)",
        description="Convert the embedded sample (a 40 x 384 x 384 crop of the Lucchi FIB-SEM volume and its "
        "mitochondria labels) into an OME-Zarr container and print where it is.",
        epilog="examples:\n  incasem-like demo\n  incasem-like demo --out /tmp/demo --workers 2",
        formatter_class=formatter,
    )
    parser.add_argument(
        "--out", default="incasem_like_demo", metavar="DIR", help="output folder (default ./incasem_like_demo)"
    )
    add_blockwise_options(parser, workers=2)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> None:
    from incasem_like.demo import run_demo

    print("incasem-like demo: converting the embedded Lucchi sample (raw + mitochondria labels)")
    container = run_demo(args.out, workers=args.workers, overwrite=args.overwrite, progress=not args.quiet)
    print(f"done: the sample cell is in {container}")
