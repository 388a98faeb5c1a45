"""Review from the command line or a pipeline: serve a container and the neuroglancer client until Ctrl-C, or
write the link (and state file) for a container hosted elsewhere."""

import ipaddress
import sys
import webbrowser
from pathlib import Path
from typing import Protocol

import neuroglancer

from incasem_like.core.errors import FieldError
from incasem_like.review.view import (
    BASE_URL_SCHEMES,
    DEFAULT_CLIENT_URL,
    ContainerServer,
    build_state,
    check_url,
    describe_layers,
    neuroglancer_link,
    shown_datasets,
    view_state,
    write_state,
)


class ViewRequest(Protocol):
    """What to show and where (the fields of the `view` step)."""

    @property
    def container(self) -> str: ...
    @property
    def datasets(self) -> list[str]: ...
    @property
    def port(self) -> int | None: ...
    @property
    def bind(self) -> str | None: ...
    @property
    def client_url(self) -> str | None: ...
    @property
    def state_file(self) -> str | None: ...
    @property
    def open(self) -> bool: ...


def share(view: ViewRequest, base_url: str) -> None:
    """A link (and state file) for data already hosted at `base_url`; no server is started."""
    if view.port is not None or view.bind is not None:
        raise FieldError("{port} and {bind} choose where to serve, but {base_url} serves nothing; drop them")
    client_url = view.client_url or DEFAULT_CLIENT_URL
    check_url(base_url, "base_url", BASE_URL_SCHEMES)
    check_url(client_url, "client_url", ("http", "https"))
    state, notes = view_state(Path(view.container), view.datasets, base_url)
    report(view, state, notes, neuroglancer_link(state, client_url), data=base_url.rstrip("/"))


def serve(view: ViewRequest) -> None:
    """Serve the container and the neuroglancer client until Ctrl-C."""
    if view.client_url is not None:
        raise FieldError("{client_url} is for {base_url} links; the local viewer serves its own client")
    port = 0 if view.port is None else view.port
    if not 0 <= port <= 65534:
        raise FieldError(f"{{port}} {port}: must be 0 (any free ports) or 1..65534 (the client takes the next port)")
    bind = view.bind or "127.0.0.1"
    datasets, notes = shown_datasets(Path(view.container), view.datasets)
    if not is_loopback(bind):
        notes.append(f"note: listening on {bind}: whoever can reach this machine can read {view.container}")
    try:
        server = ContainerServer(Path(view.container), bind, port)
    except OSError as error:
        raise FieldError(
            f"{{bind}} {bind} {{port}} {port}: cannot listen there ({error}); choose a free port"
        ) from None
    try:
        client_port = port + 1 if port else 0
        neuroglancer.set_server_bind_address(bind, bind_port=client_port)
        try:
            viewer = neuroglancer.Viewer()
        except OSError as error:
            raise FieldError(
                f"{{bind}} {bind} {{port}} {port}: cannot listen on port {client_port} for the client ({error}); "
                "choose another port"
            ) from None
        state = build_state(datasets, server.url)
        viewer.set_state(state)
        report(view, state, notes, viewer.get_viewer_url(), data=f"{server.url} (read-only)")
        print("serving until Ctrl-C", flush=True)
        server.serve_forever()
    except KeyboardInterrupt:
        print(f"stopped serving {view.container}", file=sys.stderr)
    finally:
        server.server_close()
        neuroglancer.stop()


def is_loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return address == "localhost"


def report(view: ViewRequest, state: dict, notes: list[str], link: str, data: str) -> None:
    """Print the layers, notes, data URL and link (flushed at once), write the state file, open the link."""
    if view.state_file is not None:
        write_state(state, Path(view.state_file))
    lines = [f"view {view.container}: {describe_layers(state)}", *(f"  {note}" for note in notes)]
    lines += [f"data: {data}", f"neuroglancer: {link}"]
    if view.state_file is not None:
        lines.append(f"state: {view.state_file}")
    print("\n".join(lines), flush=True)
    if view.open and not webbrowser.open(link):
        print("  note: no browser could be started; open the link yourself", flush=True)
