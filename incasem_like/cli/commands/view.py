"""`incasem-like view`: review a cell in neuroglancer, served locally or as a link to data hosted elsewhere."""

import argparse
import textwrap
from pathlib import Path

from incasem_like.cli.commands import formatter


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "view",
        help="open a cell's datasets in neuroglancer (local read-only server, or a link to hosted data)",
        description=textwrap.dedent(
            """\
            Show a container's datasets in neuroglancer: raw data as images (only the first one visible),
            labels and binary predictions as segmentation layers, probabilities as a heat map that fades to
            transparent, cell and metric masks as a shade over what they exclude; dimensions in nm, positioned at
            the centre of the data. Layer types follow the kind each dataset's writer recorded (else its name and
            dtype). Without DATASET arguments every complete OME-Zarr dataset of the container is shown; the
            others are skipped with a note.

            Locally (the default), the container is served read-only over HTTP (CORS on; nothing outside the
            container) on 127.0.0.1 and the official neuroglancer client, bundled with the neuroglancer
            package, on the next port: the printed link works offline until Ctrl-C. With --base-url nothing is
            served: the link opens data already hosted at that URL in a public neuroglancer client."""
        ),
        epilog=textwrap.dedent(
            """\
            examples:
              incasem-like view cell_6.zarr
              incasem-like view cell_6.zarr volumes/raw volumes/predictions/run1/mito/segmentation --open
              incasem-like view cell_6.zarr --port 8000       # data on 8000, client on 8001 (forward both over ssh)
              incasem-like view cell_6.zarr --base-url https://data.example.org/cells/cell_6.zarr \\
                  --state-file review.json"""
        ),
        formatter_class=formatter,
    )
    parser.add_argument("container", metavar="CONTAINER", help="the cell's zarr container, e.g. cell_6.zarr")
    parser.add_argument(
        "datasets", nargs="*", default=[], metavar="DATASET", help="datasets inside it, e.g. volumes/raw (default: all)"
    )
    parser.add_argument(
        "--port",
        type=int,
        metavar="P",
        help="serve the data on port P and the neuroglancer client on P+1 (default 0: any free ports)",
    )
    parser.add_argument(
        "--bind", metavar="ADDRESS", help="address to listen on (default 127.0.0.1; 0.0.0.0 shares with the network)"
    )
    parser.add_argument(
        "--base-url",
        metavar="URL",
        help="the container's URL where it is already hosted (http, https, s3, gs): write the link, serve nothing",
    )
    parser.add_argument(
        "--client-url",
        metavar="URL",
        help="neuroglancer client for --base-url links (default https://neuroglancer-demo.appspot.com/)",
    )
    parser.add_argument("--state-file", type=Path, metavar="OUT.json", help="also write the viewer state (JSON) here")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --state-file")
    parser.add_argument("--open", action="store_true", help="open the link in the default browser")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> None:
    from incasem_like.workflow.step import Execution, run_step
    from incasem_like.workflow.steps import ViewStep

    fields = {name: getattr(args, name) for name in ViewStep.model_fields if name != "command"}
    run_step(ViewStep(**{**fields, "state_file": args.state_file and str(args.state_file)}), Execution())
