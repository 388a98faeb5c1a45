"""Review a cell in neuroglancer: the viewer state for a container's datasets, and a read-only server for it.

`view_state` turns a container and its datasets into a neuroglancer state (a JSON dict): raw and other images
as image layers, labels and binary predictions as segmentation layers, probabilities as a heat map, masks as a
shade over what they exclude; dimensions in nm, positioned at the centre of the data. Sources are
`zarr://DATA_URL/DATASET`, so the same state works for the local server and for data hosted elsewhere.

`ContainerServer` serves one container over HTTP, read-only (GET/HEAD and CORS preflight), with CORS headers
so a neuroglancer client on another origin can read it, and never anything outside the container.
"""

import json
import mimetypes
import re
import shutil
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from itertools import cycle
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlsplit

import numpy as np

from incasem_like.core.errors import FieldError, UserError
from incasem_like.core.geometry import Coordinate, Roi, to_nm
from incasem_like.store.datasets import FULL_RESOLUTION, DatasetPath, dataset_meta, is_complete, open_dataset

#: layer kinds in drawing order: opaque images first, overlays on top of them
KINDS = ("image", "mask", "probabilities", "labels")
BASE_URL_SCHEMES = ("http", "https", "s3", "gs")
DEFAULT_CLIENT_URL = "https://neuroglancer-demo.appspot.com/"
#: segment 1 (the foreground of binary labels and predictions) of each segmentation layer, in layer order
SEGMENT_COLOURS = ("#00ff00", "#ff00ff", "#ffff00", "#00ffff", "#ff8000")
MASK_COLOUR = "#0040ff"

HEAT_MAP_SHADER = """\
#uicontrol invlerp probability(range=[0, {top}])
#uicontrol float alpha slider(min=0, max=1, default=0.7)
void main() {{
  float p = clamp(probability(), 0.0, 1.0);
  emitRGBA(vec4(colormapJet(p), p * alpha));
}}
"""

# A mask's 0 voxels (outside the cell; excluded from the metrics) are shaded, its 1 voxels left clear.
MASK_SHADER = f"""\
#uicontrol vec3 color color(default="{MASK_COLOUR}")
#uicontrol float alpha slider(min=0, max=1, default=0.4)
void main() {{
  if (toNormalized(getDataValue()) == 0.0) {{
    emitRGBA(vec4(color, alpha));
  }} else {{
    emitTransparent();
  }}
}}
"""


@dataclass(frozen=True)
class ShownDataset:
    """What the viewer state needs of one dataset: its name in the container, layer kind, region and dtype."""

    name: str
    kind: str
    roi: Roi
    voxel_size: Coordinate
    dtype: np.dtype
    #: folder (in the container) of the dataset's neuroglancer meshes, written by `incasem-like mesh`
    meshes: str | None = None


# --- datasets ----------------------------------------------------------------------------------------------------
def find_datasets(container: Path) -> list[str]:
    """Names of the container's OME-Zarr multiscale groups, sorted.

    Walks zarr groups only: not into arrays (their chunks), hidden folders (`.incasem_run`) or symbolic links.
    """
    found = []

    def visit(folder: Path, prefix: str) -> None:
        for child in sorted(folder.iterdir()):
            if child.name.startswith(".") or child.is_symlink() or not child.is_dir():
                continue
            metadata = _zarr_metadata(child)
            if metadata is None or metadata.get("node_type") != "group":
                continue
            name = f"{prefix}{child.name}"
            if "multiscales" in metadata.get("attributes", {}).get("ome", {}):
                found.append(name)
            else:
                visit(child, f"{name}/")

    visit(container, "")
    return found


def _zarr_metadata(folder: Path) -> dict | None:
    try:
        return json.loads((folder / "zarr.json").read_text())
    except (OSError, ValueError):
        return None


def layer_kind(path: DatasetPath, dtype: np.dtype) -> str:
    """The layer kind: the `kind` the dataset's writer recorded, else guessed from its name and dtype."""
    kind = dataset_meta(path).get("kind")
    if kind in KINDS:
        return kind
    parts = path.name.split("/")
    if parts[-1] == "probabilities":
        return "probabilities"
    if parts[-1] == "segmentation" or "labels" in parts[:-1]:
        return "labels"
    if any(part.endswith("masks") for part in parts[:-1]):
        return "mask"
    return "labels" if dtype.kind in "iu" and dtype.itemsize >= 4 else "image"


def shown_dataset(container: Path, name: str) -> ShownDataset:
    """One complete dataset of the container, described for the viewer state (`UserError` if it cannot be)."""
    path = DatasetPath(container, name)
    if not path.group_path.resolve().is_relative_to(container.resolve()):
        raise UserError(f"{name}: not inside {container}; name datasets relative to the container, e.g. volumes/raw")
    if not (path.group_path / FULL_RESOLUTION).exists():
        available = ", ".join(find_datasets(container)) or "none"
        raise UserError(f"{path}: no such dataset (datasets in {container}: {available})")
    volume = open_dataset(path, require_complete=False)
    if not is_complete(path):
        raise UserError(f"{path} is incomplete (its writing run did not finish); rerun the command that writes it")
    meshes = dataset_meta(path).get("meshes")
    if meshes is not None and not (container / meshes / "info").is_file():
        meshes = None  # moved or deleted since
    return ShownDataset(name, layer_kind(path, volume.dtype), volume.roi, volume.voxel_size, volume.dtype, meshes)


def shown_datasets(container: Path, names: Sequence[str] = ()) -> tuple[list[ShownDataset], list[str]]:
    """The named datasets (an unusable one is a `UserError`), or without names every usable dataset the container
    has; also notes on the datasets skipped."""
    container = Path(container)
    if not (container / "zarr.json").is_file():
        raise UserError(f"{container}: not a zarr container (no zarr.json); give a cell's container, e.g. cell_6.zarr")
    if names:
        return [shown_dataset(container, name) for name in dict.fromkeys(name.rstrip("/") for name in names)], []
    shown, notes = [], []
    for name in find_datasets(container):
        try:
            shown.append(shown_dataset(container, name))
        except UserError as error:
            notes.append(f"skipped {error}")
    if not shown:
        raise UserError(
            f"{container}: no complete OME-Zarr datasets to show (groups with multiscales metadata and "
            f"{FULL_RESOLUTION}); write some with incasem-like convert"
        )
    return shown, notes


# --- state -------------------------------------------------------------------------------------------------------
def build_state(datasets: Sequence[ShownDataset], data_url: str) -> dict:
    """The neuroglancer state (JSON dict) showing `datasets`, whose container is at `data_url`.

    Layers are drawn images first, then mask shades, heat maps and segmentations; only the first image is visible
    (images are opaque). Display dimensions x, y, z in nm at the finest voxel size; the position is the centre of
    the region all datasets cover (of their union where they do not overlap).
    """
    ordered = sorted(datasets, key=lambda dataset: KINDS.index(dataset.kind))
    voxel_size = [min(dataset.voxel_size[axis] for dataset in ordered) for axis in range(3)]
    centre = _centre([dataset.roi for dataset in ordered])
    segment_colours = cycle(SEGMENT_COLOURS)
    images = [dataset for dataset in ordered if dataset.kind == "image"]
    layers = []
    for dataset in ordered:
        layer: dict[str, Any] = {
            "type": "image",
            "name": dataset.name.removeprefix("volumes/"),
            "source": f"zarr://{data_url.rstrip('/')}/{quote(dataset.name)}",
        }
        if dataset.kind == "image":
            layer.update(opacity=1.0, visible=dataset is images[0])
        elif dataset.kind == "mask":
            layer.update(opacity=1.0, shader=MASK_SHADER)
        elif dataset.kind == "probabilities":
            top = np.iinfo(dataset.dtype).max if dataset.dtype.kind in "iu" else 1
            layer.update(opacity=1.0, shader=HEAT_MAP_SHADER.format(top=top))
        else:
            layer.update(type="segmentation", segmentColors={"1": next(segment_colours)})
            if dataset.meshes:
                layer["source"] = [layer["source"], f"precomputed://{data_url.rstrip('/')}/{quote(dataset.meshes)}"]
        layers.append(layer)
    return {
        "dimensions": {axis: [to_nm(voxel_size)[i], "nm"] for axis, i in (("x", 2), ("y", 1), ("z", 0))},
        "position": [centre[i] / voxel_size[i] for i in (2, 1, 0)],
        "layout": "4panel",
        "layers": layers,
    }


def _centre(rois: Sequence[Roi]) -> list[float]:
    """Centre (world units, z y x) of the rois' intersection, or of their union where they do not all overlap."""
    common, union = rois[0], rois[0]
    for roi in rois[1:]:
        common, union = common.intersect(roi), union.union(roi)
    region = union if common.empty else common
    return [(begin + end) / 2 for begin, end in zip(region.begin, region.end)]


def view_state(container: Path, names: Sequence[str], data_url: str) -> tuple[dict, list[str]]:
    """The neuroglancer state for a container's datasets (all usable ones without `names`) at `data_url`, and
    notes on the datasets skipped."""
    datasets, notes = shown_datasets(container, names)
    return build_state(datasets, data_url), notes


def describe_layers(state: dict) -> str:
    """`raw (image), labels/mito (segmentation), ...` for a one-line report."""
    return ", ".join(f"{layer['name']} ({layer['type']})" for layer in state["layers"])


def check_url(url: str, field: str, schemes: Sequence[str]) -> None:
    """A `FieldError` naming `field` unless `url` is an absolute URL with one of `schemes`."""
    parts = urlsplit(url)
    if parts.scheme not in schemes or not parts.netloc:
        examples = ", ".join(f"{scheme}://..." for scheme in schemes)
        raise FieldError(f"{{{field}}} {url}: not a URL this option takes; give one of {examples}")


def neuroglancer_link(state: dict, client_url: str) -> str:
    """A link that opens `state` in the neuroglancer client at `client_url` (the state is in the `#!` fragment)."""
    import neuroglancer

    return neuroglancer.to_url(neuroglancer.ViewerState(state), prefix=client_url)


def write_state(state: dict, path: Path) -> None:
    if not path.parent.is_dir():
        raise UserError(f"--state-file {path}: folder {path.parent} does not exist; create it or choose another")
    try:
        path.write_text(json.dumps(state, indent=2) + "\n")
    except OSError as error:
        raise UserError(f"--state-file {path}: cannot write it ({error.strerror}); choose another file") from None


# --- server ------------------------------------------------------------------------------------------------------
ZARR_V2_METADATA = (".zarray", ".zattrs", ".zgroup", ".zmetadata")


class Refused(Exception):
    """A request for something the container server does not serve: an HTTP status and a short reason."""

    def __init__(self, status: HTTPStatus, reason: str):
        super().__init__(reason)
        self.status = status


def container_file(root: Path, target: str) -> Path:
    """The file of the container at `root` (resolved) that the request target names, or `Refused`.

    The path (without query) is percent-decoded once, then any `.`/`..`/empty segment, backslash or NUL is
    refused, so encoded traversal and absolute paths (`/%2Fetc/passwd`) never reach the file system; what the
    path resolves to (following symbolic links) must lie inside the container. Hidden files and folders (a run's
    `.incasem_run/`: its spec, logs and lock with host, pid and command line) are not served: data and metadata
    only (zarr v2's `.zarray`, `.zattrs`, `.zgroup` count as metadata).
    """
    if not target.startswith("/"):
        raise Refused(HTTPStatus.BAD_REQUEST, "request target must be a path")
    try:
        path = unquote(target.split("?", 1)[0], errors="strict")
    except UnicodeDecodeError:
        raise Refused(HTTPStatus.BAD_REQUEST, "path is not UTF-8") from None
    segments = path[1:].split("/")
    if any(segment in ("", ".", "..") or "\\" in segment or "\0" in segment for segment in segments):
        raise Refused(HTTPStatus.BAD_REQUEST, "path must name a file inside the container")
    if any(segment.startswith(".") and segment not in ZARR_V2_METADATA for segment in segments):
        raise Refused(HTTPStatus.FORBIDDEN, "hidden files and folders (run state) are not served")
    try:
        resolved = root.joinpath(*segments).resolve()
        if not resolved.is_relative_to(root):
            raise Refused(HTTPStatus.FORBIDDEN, "path leads outside the container")
        if not resolved.is_file():
            raise Refused(HTTPStatus.NOT_FOUND, "no such file")
    except (RuntimeError, OSError) as error:  # a link loop, a name too long for the file system
        raise Refused(HTTPStatus.NOT_FOUND, f"no such file ({type(error).__name__})") from None
    return resolved


#: a single byte range; more than 18 digits is no file this server holds (and Python refuses to parse 4300+ digits)
_BYTE_RANGE = re.compile(r"bytes=(\d{0,18})-(\d{0,18})")


def byte_range(header: str | None, size: int) -> tuple[int, int] | None:
    """(first, last) byte of a single-range `Range` header for a file of `size` bytes; None to send it whole."""
    if header and header.startswith("bytes=") and _BYTE_RANGE.fullmatch(header) is None and "," not in header:
        raise Refused(HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE, f"range outside the file's {size} bytes")
    match = _BYTE_RANGE.fullmatch(header or "")
    if match is None or match.groups() == ("", ""):
        return None
    first, last = match.groups()
    if not first:
        first, last = max(size - int(last), 0), size - 1
    else:
        first, last = int(first), min(int(last), size - 1) if last else size - 1
    if first >= size or first > last:
        raise Refused(HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE, f"range outside the file's {size} bytes")
    return first, last


class ContainerRequestHandler(BaseHTTPRequestHandler):
    """GET/HEAD of the container's files (single byte ranges too), CORS preflight; every other method is 405."""

    server: "ContainerServer"
    protocol_version = "HTTP/1.1"
    server_version = "incasem-like-view"
    ALLOW = "GET, HEAD, OPTIONS"

    def do_GET(self) -> None:
        self._serve(body=True)

    def do_HEAD(self) -> None:
        self._serve(body=False)

    def do_OPTIONS(self) -> None:
        self.send_response(HTTPStatus.NO_CONTENT)
        self.send_header("Access-Control-Allow-Methods", self.ALLOW)
        self.send_header("Access-Control-Allow-Headers", "Range")
        self.send_header("Access-Control-Max-Age", "86400")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def refuse_method(self) -> None:
        self.close_connection = True  # its request body is not read
        self._send_refusal(Refused(HTTPStatus.METHOD_NOT_ALLOWED, "read-only server: GET and HEAD only"))

    do_POST = do_PUT = do_DELETE = do_PATCH = refuse_method

    def end_headers(self) -> None:
        self.send_header("Access-Control-Allow-Origin", "*")
        self.send_header("Access-Control-Expose-Headers", "Content-Length, Content-Range")
        super().end_headers()

    def log_message(self, format: str, *args) -> None:
        """Quiet: a viewer fetches many chunks."""

    def _serve(self, body: bool) -> None:
        try:
            path = container_file(self.server.root, self.path)
            size = path.stat().st_size
            served = byte_range(self.headers.get("Range"), size)
        except Refused as refusal:
            self._send_refusal(refusal, body)
            return
        first, last = served or (0, size - 1)
        self.send_response(HTTPStatus.PARTIAL_CONTENT if served else HTTPStatus.OK)
        if served:
            self.send_header("Content-Range", f"bytes {first}-{last}/{size}")
        self.send_header("Content-Type", mimetypes.guess_type(path.name)[0] or "application/octet-stream")
        self.send_header("Content-Length", str(last - first + 1))
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()
        if body:
            with path.open("rb") as file:
                file.seek(first)
                shutil.copyfileobj(_Limited(file, last - first + 1), self.wfile)

    def _send_refusal(self, refusal: Refused, body: bool = True) -> None:
        message = f"{refusal.status.value} {refusal.status.phrase}: {refusal}\n".encode()
        self.send_response(refusal.status)
        if refusal.status == HTTPStatus.METHOD_NOT_ALLOWED:
            self.send_header("Allow", self.ALLOW)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(message)))
        self.end_headers()
        if body:
            self.wfile.write(message)


class _Limited:
    """A file read up to `remaining` bytes (for byte ranges)."""

    def __init__(self, file, remaining: int):
        self.file, self.remaining = file, remaining

    def read(self, size: int = -1) -> bytes:
        size = self.remaining if size < 0 else min(size, self.remaining)
        data = self.file.read(size)
        self.remaining -= len(data)
        return data


class ContainerServer(ThreadingHTTPServer):
    """A read-only, CORS-enabled HTTP server for one container (bound to 127.0.0.1 unless told otherwise)."""

    daemon_threads = True

    def __init__(self, container: Path, bind: str = "127.0.0.1", port: int = 0):
        self.root = Path(container).resolve()
        self.address_family = socket.AF_INET6 if ":" in bind else socket.AF_INET
        super().__init__((bind, port), ContainerRequestHandler)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return server_url(str(host), int(port))


def server_url(bind: str, port: int) -> str:
    """The base URL of a server bound to `bind`: this host's name if it listens everywhere (as neuroglancer's)."""
    host = socket.getfqdn() if bind in ("0.0.0.0", "::") else bind
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
