"""`incasem-like view`: the neuroglancer state of a container, the read-only container server and the command.

Everything is real: containers written with our data model, a real HTTP server answering raw HTTP requests, the
command in a subprocess, and the printed link opened in headless Chromium (skipped where it is not installed).
"""

import http.client
import io
import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import unquote, urlsplit

import neuroglancer
import numpy as np
import pytest
import tifffile
from PIL import Image
from scipy import ndimage

from incasem_like.cli.main import main
from incasem_like.core.errors import UserError
from incasem_like.core.geometry import Coordinate, Roi, to_world
from incasem_like.review.view import (
    MASK_COLOUR,
    SEGMENT_COLOURS,
    ContainerServer,
    ShownDataset,
    build_state,
    view_state,
)
from incasem_like.store.datasets import (
    CELL_MASK,
    RAW,
    RAW_CLAHE,
    DatasetPath,
    create_dataset,
    create_level,
    labels_name,
    metric_mask_name,
    prediction_names,
    set_levels,
    update_dataset_meta,
)
from incasem_like.workflow.demo import SAMPLE
from tests.browser import headless_chromium, missing_browser, wait_for
from tests.conftest import REPO, SHARED_DATA, interruptible, write_dataset

DATA_URL = "https://data.example.org/cells/cell.zarr"
PROBABILITIES, SEGMENTATION = prediction_names("run1", "mito")


def write_kind(container: Path, name: str, volume: np.ndarray, kind: str | None, chunk: int = 8) -> DatasetPath:
    """A complete dataset (5 nm voxels) whose writer recorded `kind` (None: records none, like other tools)."""
    path = write_dataset(container / name, volume, chunk=chunk)
    if kind is not None:
        update_dataset_meta(path, kind=kind)
    return path


@pytest.fixture
def cell(tmp_path, rng) -> Path:
    """A container with the conventional datasets, two without a recorded kind and one incomplete."""
    container = tmp_path / "cell.zarr"
    image = rng.integers(0, 256, (8, 16, 24), dtype=np.uint8)
    binary = (image > 128).astype(np.uint8)
    write_kind(container, RAW, image, "image")
    write_kind(container, RAW_CLAHE, image, "image")
    write_kind(container, CELL_MASK, binary, "mask")
    write_kind(container, labels_name("mito"), binary, "labels")
    write_kind(container, metric_mask_name("mito"), binary, "mask")
    write_kind(container, PROBABILITIES, image, "probabilities")
    write_kind(container, SEGMENTATION, binary, "labels")
    write_kind(container, "volumes/predictions/run2/er/probabilities", image.astype(np.float32) / 255, None)
    write_kind(container, "volumes/objects", image.astype(np.uint64), None)
    create_dataset(DatasetPath(container, labels_name("er")), image.shape, (5, 5, 5), (0, 0, 0), "uint8")
    return container


# --- the state ---------------------------------------------------------------------------------------------------
def test_state_shows_every_complete_dataset_with_a_layer_for_its_kind(cell):
    state, notes = view_state(cell, [], DATA_URL)

    layers = {layer["name"]: layer for layer in state["layers"]}
    # Drawing order: opaque images, then mask shades, heat maps and segmentations on top.
    assert list(layers) == [
        "raw",
        "raw_clahe",
        "masks/cell",
        "metric_masks/mito",
        "predictions/run1/mito/probabilities",
        "predictions/run2/er/probabilities",
        "labels/mito",
        "objects",
        "predictions/run1/mito/segmentation",
    ]
    assert notes == [
        f"skipped {cell}/volumes/labels/er is incomplete (its writing run did not finish); "
        "rerun the command that writes it"
    ]
    assert {name: layer["source"] for name, layer in layers.items()} == {
        name: f"zarr://{DATA_URL}/volumes/{name}" for name in layers
    }
    # Only the first image is visible: images are opaque and would hide each other.
    assert [(layers[name]["type"], layers[name]["visible"]) for name in ("raw", "raw_clahe")] == [
        ("image", True),
        ("image", False),
    ]
    # Masks shade what they exclude (value 0) and leave the rest clear.
    for name in ("masks/cell", "metric_masks/mito"):
        assert layers[name]["type"] == "image" and MASK_COLOUR in layers[name]["shader"]
        assert "emitTransparent" in layers[name]["shader"]
    # Probabilities: a jet heat map fading to transparent, over the dtype's range (uint8 0..255, float 0..1).
    for name, top in (("predictions/run1/mito/probabilities", 255), ("predictions/run2/er/probabilities", 1)):
        shader = layers[name]["shader"]
        assert layers[name]["type"] == "image" and "colormapJet" in shader and f"range=[0, {top}]" in shader
    # Labels and binary predictions are segmentations, each with its own colour for segment 1; the uint64 dataset
    # without a recorded kind counts as labels.
    segmentations = ["labels/mito", "objects", "predictions/run1/mito/segmentation"]
    assert [layers[name]["type"] for name in segmentations] == ["segmentation"] * 3
    assert [layers[name]["segmentColors"] for name in segmentations] == [{"1": c} for c in SEGMENT_COLOURS[:3]]
    # The state is what neuroglancer's own state class reads back unchanged.
    assert neuroglancer.ViewerState(state).to_json() == state


def test_named_datasets_are_shown_in_drawing_order_and_bad_names_are_refused(cell, tmp_path):
    state, notes = view_state(cell, [SEGMENTATION, RAW + "/", RAW], "http://127.0.0.1:8000/")
    assert [(layer["name"], layer["type"]) for layer in state["layers"]] == [
        ("raw", "image"),
        ("predictions/run1/mito/segmentation", "segmentation"),
    ]
    assert state["layers"][0]["source"] == "zarr://http://127.0.0.1:8000/volumes/raw"
    assert notes == []

    listed = r"golgi: no such dataset \(datasets in .*cell.zarr: volumes/labels/er, volumes/labels/mito, volumes/masks"
    with pytest.raises(UserError, match=listed):
        view_state(cell, [labels_name("golgi")], DATA_URL)
    with pytest.raises(UserError, match="volumes/labels/er is incomplete"):
        view_state(cell, [labels_name("er")], DATA_URL)
    with pytest.raises(UserError, match=r"\.\./elsewhere.zarr/volumes/raw: not inside"):
        view_state(cell, ["../elsewhere.zarr/volumes/raw"], DATA_URL)
    with pytest.raises(UserError, match="not a zarr container"):
        view_state(tmp_path / "missing.zarr", [], DATA_URL)


def shown(name: str, kind: str, offset, shape, voxel_size=(5, 5, 5), dtype="uint8") -> ShownDataset:
    """A dataset as the state sees it; `offset` and `voxel_size` in nm."""
    voxel_size = to_world(voxel_size)
    return ShownDataset(name, kind, Roi(to_world(offset), Coordinate(shape) * voxel_size), voxel_size, np.dtype(dtype))


def test_state_is_in_nm_at_the_centre_of_the_data():
    raw = shown("volumes/raw", "image", offset=(100, 0, 0), shape=(8, 16, 24))
    state = build_state([raw], DATA_URL)
    # Displayed x, y, z (x to the right in the xy panel) in nm; the position is in those units: the centre of
    # z 100..140, y 0..80, x 0..120 nm.
    assert state["dimensions"] == {"x": [5, "nm"], "y": [5, "nm"], "z": [5, "nm"]}
    assert state["position"] == [12.0, 8.0, 24.0]

    # A prediction of part of the cell at half the resolution: the finest voxel size, the centre of the region
    # both cover (z 110..130, y 20..60, x 40..80 nm).
    prediction = shown(PROBABILITIES, "probabilities", offset=(110, 20, 40), shape=(2, 4, 4), voxel_size=(10, 10, 10))
    state = build_state([prediction, raw], DATA_URL)
    assert state["dimensions"] == {"x": [5, "nm"], "y": [5, "nm"], "z": [5, "nm"]}
    assert state["position"] == [12.0, 8.0, 24.0]
    prediction = shown(PROBABILITIES, "probabilities", offset=(110, 20, 40), shape=(2, 2, 4), voxel_size=(10, 10, 10))
    assert build_state([prediction, raw], DATA_URL)["position"] == [12.0, 6.0, 24.0]

    # Anisotropic voxels, and regions that do not overlap: the centre of their union (z 0..140, y 0..80,
    # x 0..200 nm).
    elsewhere = shown("volumes/labels/mito", "labels", offset=(0, 0, 160), shape=(10, 4, 4), voxel_size=(4, 10, 10))
    state = build_state([raw, elsewhere], DATA_URL)
    assert state["dimensions"] == {"x": [5, "nm"], "y": [5, "nm"], "z": [4, "nm"]}
    assert state["position"] == [20.0, 8.0, 17.5]


# --- the server --------------------------------------------------------------------------------------------------
@pytest.fixture
def served(tmp_path, rng):
    """A container served from a background thread, with a secret beside it and links into and out of it."""
    container = tmp_path / "cell.zarr"
    write_dataset(container / RAW, rng.integers(0, 256, (8, 16, 24), dtype=np.uint8), chunk=8)
    (tmp_path / "secret.txt").write_text("TOP SECRET\n")
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "secret.txt").write_text("TOP SECRET\n")
    (container / "volumes" / "leak.txt").symlink_to(tmp_path / "secret.txt")
    (container / "outside").symlink_to(tmp_path / "elsewhere")
    (container / "raw_alias").symlink_to(container / RAW)
    (container / RAW / ".incasem_run").mkdir(exist_ok=True)
    for name in ("spec.json", "lock"):
        (container / RAW / ".incasem_run" / name).write_text("SECRET run state\n")
    server = ContainerServer(container)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server, container
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def request(server: ContainerServer, method: str, target: str, headers: dict | None = None):
    """(status, headers, body) of one raw HTTP request: the target is sent exactly as given."""
    connection = http.client.HTTPConnection(*server.server_address[:2], timeout=10)
    try:
        connection.request(method, target, headers=headers or {})
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        connection.close()


def test_server_serves_the_container_read_only_with_cors(served):
    server, container = served
    chunk = container / RAW / "s0" / "c" / "0" / "1" / "2"
    assert server.server_address[0] == "127.0.0.1"  # the default: this machine only

    status, headers, body = request(server, "GET", "/volumes/raw/s0/c/0/1/2")
    assert (status, body) == (200, chunk.read_bytes())
    assert headers["Access-Control-Allow-Origin"] == "*"
    assert json.loads(request(server, "GET", "/volumes/raw/zarr.json")[2])["attributes"]["ome"]["multiscales"]

    status, headers, body = request(server, "HEAD", "/volumes/raw/s0/c/0/1/2")
    assert (status, int(headers["Content-Length"]), body) == (200, len(chunk.read_bytes()), b"")
    status, headers, body = request(server, "GET", "/volumes/raw/s0/c/0/1/2", {"Range": "bytes=2-5"})
    assert (status, body) == (206, chunk.read_bytes()[2:6])
    assert headers["Content-Range"] == f"bytes 2-5/{chunk.stat().st_size}"
    assert request(server, "GET", "/volumes/raw/s0/c/0/1/2", {"Range": "bytes=-3"})[2] == chunk.read_bytes()[-3:]
    assert request(server, "GET", "/volumes/raw/s0/c/0/1/2", {"Range": "bytes=100000-"})[0] == 416
    # CORS preflight (a browser sends one before a Range request) allows reading only.
    status, headers, _ = request(server, "OPTIONS", "/volumes/raw/zarr.json")
    assert (status, headers["Access-Control-Allow-Methods"]) == (204, "GET, HEAD, OPTIONS")

    # Links that stay inside the container are followed; missing files and folders are 404.
    assert request(server, "GET", "/raw_alias/s0/c/0/1/2")[:3:2] == (200, chunk.read_bytes())
    assert request(server, "GET", "/volumes/raw/s0/c/9/9/9")[0] == 404
    assert request(server, "GET", "/volumes/raw")[0] == 404
    assert request(server, "GET", "/")[0] == 400  # names no file

    for method in ("POST", "PUT", "DELETE", "PATCH"):
        status, headers, _ = request(server, method, "/volumes/raw/s0/c/0/1/2", {"Content-Length": "0"})
        assert (status, headers["Allow"]) == (405, "GET, HEAD, OPTIONS")
    assert (container / RAW / "s0" / "c" / "0" / "1" / "2").read_bytes() == chunk.read_bytes()


@pytest.mark.parametrize(
    "target, status",
    [
        ("/../secret.txt", 400),
        ("/volumes/../../secret.txt", 400),
        ("/%2e%2e/secret.txt", 400),
        ("/volumes/..%2f..%2fsecret.txt", 400),
        ("/..\\secret.txt", 400),
        ("/./volumes/raw/zarr.json", 400),
        ("ABSOLUTE", 404),  # //tmp/.../secret.txt: http.server makes it /tmp/..., looked up in the container
        ("ABSOLUTE_ENCODED", 400),  # /%2Ftmp%2F...%2Fsecret.txt
        ("ABSOLUTE_FORM", 400),  # http://host/../secret.txt, as sent to proxies
        ("/volumes/leak.txt", 403),  # a link to the secret
        ("/outside/secret.txt", 403),  # a linked folder outside
        ("/%ff", 400),
        ("/volumes/raw/.incasem_run/spec.json", 403),  # run state: host, pid and command line
        ("/volumes/raw/%2eincasem_run/lock", 403),
    ],
)
def test_server_never_serves_anything_outside_the_container(served, tmp_path, target, status):
    server, _ = served
    secret = str(tmp_path / "secret.txt")
    target = {
        "ABSOLUTE": "/" + secret,
        "ABSOLUTE_ENCODED": "/" + secret.replace("/", "%2F"),
        "ABSOLUTE_FORM": f"http://127.0.0.1:{server.server_address[1]}/../secret.txt",
    }.get(target, target)
    got, _, body = request(server, "GET", target)
    assert got == status
    assert b"SECRET" not in body


# --- the command -------------------------------------------------------------------------------------------------
def test_base_url_writes_the_link_and_state_without_opening_a_socket(cell, tmp_path, monkeypatch, capsys):
    def no_sockets(*args, **kwargs):
        raise AssertionError("--base-url must not open a socket")

    for method in ("bind", "listen", "connect"):
        monkeypatch.setattr(socket.socket, method, no_sockets)
    state_file = tmp_path / "review.json"

    arguments = [str(cell), RAW, labels_name("mito"), "--base-url", DATA_URL + "/", "--state-file", str(state_file)]
    assert main(["view", *arguments]) == 0

    out = capsys.readouterr().out
    link = next(line.removeprefix("neuroglancer: ") for line in out.splitlines() if line.startswith("neuroglancer: "))
    client, fragment = link.split("#!")
    state = json.loads(state_file.read_text())
    assert client == "https://neuroglancer-demo.appspot.com/"
    assert json.loads(unquote(fragment)) == state
    assert [layer["source"] for layer in state["layers"]] == [
        f"zarr://{DATA_URL}/volumes/raw",
        f"zarr://{DATA_URL}/volumes/labels/mito",
    ]
    assert neuroglancer.server.global_server is None
    assert f"view {cell}: raw (image), labels/mito (segmentation)" in out

    assert main(["view", str(cell), RAW, "--base-url", "s3://bucket/cell.zarr", "--client-url", "http://ng/"]) == 0
    link = capsys.readouterr().out.split("neuroglancer: ")[1].strip()
    assert link.startswith("http://ng/#!") and "zarr://s3://bucket/cell.zarr/volumes/raw" in unquote(link)


@pytest.fixture(scope="module")
def raw_only(tmp_path_factory) -> Path:
    """A container with one dataset, volumes/raw."""
    container = tmp_path_factory.mktemp("view") / "cell.zarr"
    write_kind(container, RAW, np.zeros((8, 16, 24), np.uint8), "image")
    return container


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["MISSING"], "missing.zarr: not a zarr container"),
        ([labels_name("golgi")], "volumes/labels/golgi: no such dataset"),
        (["--base-url", "ftp://host/cell.zarr"], "--base-url ftp://host/cell.zarr: not a URL this option takes"),
        (["--base-url", DATA_URL, "--client-url", "file:///ng"], "--client-url file:///ng: not a URL"),
        (["--base-url", DATA_URL, "--port", "8000"], "--base-url serves nothing; drop them"),
        (["--client-url", "https://ng.example.org/"], "--client-url is for --base-url links"),
        (["--port", "70000"], "--port 70000: Input should be less than or equal to 65535"),
        (["--port", "BUSY"], "cannot listen there"),
        (["--base-url", DATA_URL, "--state-file", "NOWHERE"], "does not exist; create it or choose another"),
    ],
)
def test_bad_input_is_one_line_naming_it(raw_only, tmp_path, capsys, arguments, message):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        replacements = {
            "MISSING": str(tmp_path / "missing.zarr"),
            "BUSY": str(busy.getsockname()[1]),
            "NOWHERE": str(tmp_path / "no" / "state.json"),
        }
        arguments = [replacements.get(argument, argument) for argument in arguments]
        container = [] if arguments[0].endswith("missing.zarr") else [str(raw_only)]
        assert main(["view", *container, *arguments]) == 2
    error = capsys.readouterr().err
    assert message in error and error.count("\n") == 1
    assert neuroglancer.server.global_server is None


@contextmanager
def running_view(*arguments, env: dict | None = None):
    """`incasem-like view` in a subprocess; yields it and a function that returns its next stdout line."""
    process = subprocess.Popen(
        [sys.executable, "-m", "incasem_like", "view", *map(str, arguments)],
        cwd=REPO,
        preexec_fn=interruptible,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
    )
    lines = queue.Queue()
    reader = threading.Thread(target=lambda: [lines.put(line) for line in process.stdout], daemon=True)
    reader.start()

    def next_line(timeout: float = 60) -> str:
        try:
            return lines.get(timeout=timeout).rstrip("\n")
        except queue.Empty:
            raise AssertionError(f"no output from incasem-like view in {timeout} s") from None

    try:
        yield process, next_line
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()
        reader.join()


def read_report(next_line) -> dict[str, str]:
    """The command's `key: value` lines up to the one saying it serves."""
    report = {}
    while (line := next_line()) != "serving until Ctrl-C":
        key, _, value = line.partition(": ")
        report[key] = value
    return report


def fetch(url: str) -> tuple[int, bytes]:
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    try:
        connection.request("GET", parts.path)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def test_command_serves_until_ctrl_c_and_prints_the_link_at_once(cell, tmp_path):
    opener = tmp_path / "opener.sh"  # the "default browser": notes the link it is asked to open
    opener.write_text(f'#!/bin/sh\nprintf "%s" "$1" > {tmp_path / "opened.txt"}\n')
    opener.chmod(0o755)
    state_file = tmp_path / "state.json"

    with running_view(cell, "--state-file", state_file, "--open", env={"BROWSER": str(opener)}) as (process, next_line):
        report = read_report(next_line)
        data_url = report["data"].removesuffix(" (read-only)")
        link = report["neuroglancer"]
        assert data_url.startswith("http://127.0.0.1:") and link.startswith("http://127.0.0.1:")
        assert report[f"view {cell}"].startswith("raw (image), raw_clahe (image), masks/cell (image), ")
        assert "  skipped" in "\n".join(report)  # the incomplete labels/er
        # The link is the neuroglancer client, served locally; the data come from the container server.
        status, page = fetch(link)
        assert status == 200 and b"<title>neuroglancer</title>" in page
        status, metadata = fetch(f"{data_url}/volumes/raw/zarr.json")
        assert status == 200 and json.loads(metadata)["attributes"]["ome"]["multiscales"]
        assert json.loads(state_file.read_text())["layers"][0]["source"] == f"zarr://{data_url}/volumes/raw"
        assert (tmp_path / "opened.txt").read_text() == link

        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=30) == 0
        assert f"stopped serving {cell}" in process.stderr.read()
    with pytest.raises(ConnectionRefusedError):
        fetch(f"{data_url}/volumes/raw/zarr.json")


# --- the link in a real browser ----------------------------------------------------------------------------------
# Once every layer has loaded (or one failed) and everything is drawn: the layers and the rectangle of the
# top-left (xy) panel in screenshot pixels; else null.
LOADED_AND_DRAWN = """
const viewer = window.viewer;
const managed = viewer?.layerManager.managedLayers ?? [];
if (managed.length < arguments[0]) return null;
for (const {name, layer} of managed) {
  const state = layer?.dataSources[0]?.loadState;
  if (state === undefined) return null;
  if (state.error !== undefined) return {error: `${name}: ${state.error.message ?? state.error}`};
  const shaderError = layer.shaderError?.value;
  if (shaderError) return {error: `${name}: shader: ${shaderError.message ?? shaderError}`};
}
if (!viewer.isReady()) return null;
const panels = Array.from(document.querySelectorAll('.neuroglancer-rendered-data-panel'))
  .map(panel => panel.getBoundingClientRect())
  .sort((a, b) => a.top - b.top || a.left - b.left);
if (panels.length === 0) return null;  // the layout is still being (re)built
const xy = panels[0];
return {
  layers: managed.map(({name, visible}) => [name, visible]),
  xy: [xy.left, xy.top, xy.right, xy.bottom].map(v => Math.round(v * window.devicePixelRatio)),
};
"""


# Axis lines and bounding boxes are drawn in pure red, green and blue: hidden, so that colours are the data's.
HIDE_AXIS_LINES_AND_BOXES = """
const viewer = window.viewer;
if (viewer === undefined) return false;
viewer.showAxisLines.value = false;
viewer.showDefaultAnnotations.value = false;
viewer.showScaleBar.value = false;
return true;
"""


def shown_in_chromium(container: Path, *datasets: str, layers: int, timeout: float = 90) -> tuple[dict, bytes]:
    """`incasem-like view CONTAINER [DATASETS]` opened in headless Chromium: what `LOADED_AND_DRAWN` reports once
    the `layers` layers are drawn, and a screenshot (PNG) of it."""
    with running_view(container, *datasets) as (_, next_line), headless_chromium() as driver:
        driver.get(read_report(next_line)["neuroglancer"])
        wait_for(lambda: driver.execute_script(HIDE_AXIS_LINES_AND_BOXES), "the neuroglancer client to start")
        drawn = wait_for(lambda: driver.execute_script(LOADED_AND_DRAWN, layers), "neuroglancer to draw", timeout)
        return drawn, driver.get_screenshot_as_png()


@pytest.fixture
def lucchi_cell(tmp_path) -> Path:
    """16 x 128 x 128 voxels of the Lucchi sample with its mitochondria (kind labels), a raw pyramid s0..s1, a cell
    mask excluding x < 16 and a probability box at y, x 96..128 where the labels are cleared."""
    slices = sorted(Path(str(SAMPLE)).glob("raw/*.tif"))[12:28]
    crop = (slice(None), slice(0, 128), slice(192, 320))
    raw = tifffile.imread(slices)[crop]
    labels = (tifffile.imread([Path(str(SAMPLE)) / "mito" / path.name for path in slices])[crop] > 0).astype(np.uint8)
    labels[:, 96:, 96:] = 0
    probabilities = np.zeros_like(raw)
    probabilities[:, 96:, 96:] = 255
    cell_mask = np.ones_like(raw)
    cell_mask[:, :, :16] = 0

    container = tmp_path / "lucchi.zarr"
    raw_path = write_kind(container, RAW, raw, "image", chunk=32)
    level = create_level(raw_path, 1, [s // 2 for s in raw.shape], raw.dtype, (32, 32, 32))
    level[:] = raw.reshape(8, 2, 64, 2, 64, 2).mean(axis=(1, 3, 5)).astype(np.uint8)
    set_levels(raw_path, 2)
    write_kind(container, labels_name("mito"), labels, "labels", chunk=32)
    write_kind(container, PROBABILITIES, probabilities, "probabilities", chunk=32)
    write_kind(container, CELL_MASK, cell_mask, "mask", chunk=32)
    return container


@pytest.mark.skipif(missing_browser() is not None, reason=f"browser tests: {missing_browser()}")
def test_link_shows_raw_data_with_overlays_in_chromium(lucchi_cell, tmp_path):
    drawn, screenshot = shown_in_chromium(lucchi_cell, layers=4)
    (tmp_path / "view.png").write_bytes(screenshot)

    assert "error" not in drawn, drawn["error"]
    assert drawn["layers"] == [
        ["raw", True],
        ["masks/cell", True],
        ["predictions/run1/mito/probabilities", True],
        ["labels/mito", True],
    ]
    left, top, right, bottom = drawn["xy"]
    pixels = np.asarray(Image.open(io.BytesIO(screenshot)).convert("RGB")).astype(int)[top:bottom, left:right]
    red, green, blue = pixels[..., 0], pixels[..., 1], pixels[..., 2]
    data = (pixels != pixels[-3, 3]).any(axis=-1)  # not the panel's background
    grey = data & (pixels.max(axis=-1) - pixels.min(axis=-1) <= 8)
    mito = (green > red + 60) & (green > blue + 60)  # segment 1 of labels/mito, #00ff00 at alpha 0.5
    heat = (red > green + 60) & (red > blue + 60)  # probability 1: the jet map's dark red
    shade = (blue > red + 60) & (blue > green + 60)  # outside the cell mask
    rows, cols = np.indices(grey.shape)
    # The data are drawn in the middle of the panel (the position is their centre); the raw data are EM texture,
    # not a flat canvas, with every overlay where its data are: the shade left of the heat-mapped box, which lies
    # in the bottom right.
    assert (rows[data].min() + rows[data].max()) / 2 == pytest.approx(data.shape[0] / 2, abs=3)
    assert (cols[data].min() + cols[data].max()) / 2 == pytest.approx(data.shape[1] / 2, abs=3)
    assert grey.sum() > 5000 and pixels[grey][:, 0].std() > 15
    assert mito.sum() > 500 and heat.sum() > 500 and shade.sum() > 200
    assert cols[shade].mean() < cols[mito].mean() < cols[heat].mean()
    assert rows[heat].mean() > rows[grey].mean()


@pytest.mark.slow
@pytest.mark.skipif(missing_browser() is not None, reason=f"browser tests: {missing_browser()}")
@pytest.mark.skipif(not (SHARED_DATA / "vnc_sstem").is_dir(), reason=f"no shared data at {SHARED_DATA}")
def test_anisotropic_non_integer_voxels_are_drawn_to_scale_in_chromium(tmp_path):
    """Real ssTEM sections (z y x = 50 x 4.6 x 4.6 nm) with their membrane labels: the xy panel shows a square
    section (4.6 nm both ways) with the labels on the membranes; the screenshot is kept as the test's artifact."""
    folder = SHARED_DATA / "vnc_sstem" / "stack1"
    names = sorted(path.name for path in (folder / "raw").glob("*.tif"))[:4]
    raw = np.stack([tifffile.imread(folder / "raw" / name)[:256, :256] for name in names])
    membranes = np.stack([tifffile.imread(folder / "membranes" / name)[:256, :256] for name in names]) > 0
    container = tmp_path / "vnc.zarr"
    update_dataset_meta(write_dataset(container / RAW, raw, chunk=64, voxel_size=(50, 4.6, 4.6)), kind="image")
    labels = write_dataset(
        container / labels_name("membranes"), membranes.astype(np.uint8), 64, voxel_size=(50, 4.6, 4.6)
    )
    update_dataset_meta(labels, kind="labels")
    drawn, screenshot = shown_in_chromium(container, layers=2)
    (tmp_path / "vnc_anisotropic.png").write_bytes(screenshot)

    assert "error" not in drawn, drawn["error"]
    left, top, right, bottom = drawn["xy"]
    pixels = np.asarray(Image.open(io.BytesIO(screenshot)).convert("RGB")).astype(int)[top:bottom, left:right]
    data = (pixels != pixels[-3, 3]).any(axis=-1)
    centre_row, centre_col = data.shape[0] // 2, data.shape[1] // 2

    def run_through_centre(line: np.ndarray, centre: int) -> int:
        """The length of the run of data pixels through the panel's centre (the data are drawn centred; an EM
        pixel that happens to have the background's colour is no gap)."""
        gaps = np.flatnonzero(~ndimage.binary_closing(line, np.ones(9, bool)))
        return int(gaps[gaps > centre].min(initial=len(line)) - gaps[gaps < centre].max(initial=-1) - 1)

    width, height = (
        run_through_centre(data[centre_row], centre_col),
        run_through_centre(data[:, centre_col], centre_row),
    )
    assert width > 100 and width == pytest.approx(height, abs=3)  # a section of 4.6 x 4.6 nm pixels is square
    green = (pixels[..., 1] > pixels[..., 0] + 60) & (pixels[..., 1] > pixels[..., 2] + 60)
    assert 0.05 < green.sum() / data.sum() < 0.6  # the membranes (20% of the section) are drawn over it
