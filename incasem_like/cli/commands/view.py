"""`incasem-like view`: review a cell in neuroglancer, served locally or as a link to data hosted elsewhere."""

import argparse
import sys
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
        "datasets", nargs="*", metavar="DATASET", help="datasets inside it, e.g. volumes/raw (default: all)"
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
    parser.add_argument("--open", action="store_true", help="open the link in the default browser")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> None:
    if args.base_url is not None:
        share(args)
    else:
        serve(args)


def share(args: argparse.Namespace) -> None:
    """A link (and state file) for data already hosted at --base-url; no server is started."""
    from incasem_like.core.errors import UserError
    from incasem_like.review.view import BASE_URL_SCHEMES, DEFAULT_CLIENT_URL, check_url, neuroglancer_link, view_state

    if args.port is not None or args.bind is not None:
        raise UserError("--port and --bind choose where to serve, but --base-url serves nothing; drop them")
    client_url = args.client_url or DEFAULT_CLIENT_URL
    check_url(args.base_url, "--base-url", BASE_URL_SCHEMES)
    check_url(client_url, "--client-url", ("http", "https"))
    state, notes = view_state(Path(args.container), args.datasets, args.base_url)
    report(args, state, notes, neuroglancer_link(state, client_url), data=args.base_url.rstrip("/"))


def serve(args: argparse.Namespace) -> None:
    """Serve the container and the neuroglancer client until Ctrl-C."""
    import neuroglancer

    from incasem_like.core.errors import UserError
    from incasem_like.review.view import ContainerServer, build_state, shown_datasets

    if args.client_url is not None:
        raise UserError("--client-url is for --base-url links; the local viewer serves its own client")
    port = 0 if args.port is None else args.port
    if not 0 <= port <= 65534:
        raise UserError(f"--port {port}: must be 0 (any free ports) or 1..65534 (the client takes the next port)")
    bind = args.bind or "127.0.0.1"
    datasets, notes = shown_datasets(Path(args.container), args.datasets)
    if not is_loopback(bind):
        notes.append(f"note: listening on {bind}: whoever can reach this machine can read {args.container}")
    try:
        server = ContainerServer(Path(args.container), bind, port)
    except OSError as error:
        raise UserError(f"--bind {bind} --port {port}: cannot listen there ({error}); choose a free port") from None
    try:
        client_port = port + 1 if port else 0
        neuroglancer.set_server_bind_address(bind, bind_port=client_port)
        try:
            viewer = neuroglancer.Viewer()
        except OSError as error:
            raise UserError(
                f"--bind {bind} --port {port}: cannot listen on port {client_port} for the client ({error}); "
                "choose another port"
            ) from None
        state = build_state(datasets, server.url)
        viewer.set_state(state)
        report(args, state, notes, viewer.get_viewer_url(), data=f"{server.url} (read-only)")
        print("serving until Ctrl-C", flush=True)
        server.serve_forever()
    except KeyboardInterrupt:
        print(f"stopped serving {args.container}", file=sys.stderr)
    finally:
        server.server_close()
        neuroglancer.stop()


def is_loopback(address: str) -> bool:
    import ipaddress

    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return address == "localhost"


def report(args: argparse.Namespace, state: dict, notes: list[str], link: str, data: str) -> None:
    """Print the layers, notes, data URL and link (flushed at once), write the state file, open the link."""
    import webbrowser

    from incasem_like.review.view import describe_layers, write_state

    if args.state_file is not None:
        write_state(state, args.state_file)
    lines = [f"view {args.container}: {describe_layers(state)}", *(f"  {note}" for note in notes)]
    lines += [f"data: {data}", f"neuroglancer: {link}"]
    if args.state_file is not None:
        lines.append(f"state: {args.state_file}")
    print("\n".join(lines), flush=True)
    if args.open and not webbrowser.open(link):
        print("  note: no browser could be started; open the link yourself", flush=True)
