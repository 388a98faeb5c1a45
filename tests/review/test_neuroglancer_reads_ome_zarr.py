"""The official neuroglancer client (bundled with the `neuroglancer` package) reads our OME-Zarr datasets.

A small dataset is served over HTTP on 127.0.0.1, opened in headless Chromium through `neuroglancer.Viewer`
(its local server hosts the client) as `zarr://http://...`, and what the client parsed is read back: the
coordinate space from the Python-side viewer state the client fills in, the volume bounds from the page's
`window.viewer`. A screenshot shows the bright cube drawn where it is in the data.
"""

import io

import neuroglancer
import numpy as np
import pytest
from PIL import Image

from incasem_like.core.geometry import to_world
from incasem_like.store.datasets import DatasetPath, create_dataset, update_dataset_meta
from tests.browser import headless_chromium, missing_browser, serve_directory, wait_for

pytestmark = pytest.mark.skipif(missing_browser() is not None, reason=f"browser tests: {missing_browser()}")

SHAPE = (40, 64, 96)
VOXEL_SIZE = (5, 5, 5)
OFFSET = (100, 0, 0)
CUBE = (slice(10, 30), slice(8, 40), slice(16, 64))
DARK, BRIGHT = 10, 240
PIXELS_PER_VOXEL = 4

# What the client parsed, once it has failed to load the layer or has loaded it (else null).
READ_CLIENT = """
const viewer = window.viewer;
const state = viewer?.layerManager.managedLayers[0]?.layer?.dataSources[0]?.loadState;
if (state === undefined) return null;
if (state.error !== undefined) return {error: String(state.error.message ?? state.error)};
const space = viewer.coordinateSpace.value;
if (!space.valid || space.bounds === undefined) return null;
return {
  canonicalUrl: state.dataSource.canonicalUrl,
  names: space.names,
  lower: Array.from(space.bounds.lowerBounds),
  upper: Array.from(space.bounds.upperBounds),
};
"""

# The data panel's rectangle in screenshot pixels, once everything is drawn at zoom arguments[0] (else null).
DRAWN_PANEL = """
const viewer = window.viewer;
if (Math.abs(viewer.navigationState.zoomFactor.value - arguments[0]) > 1e-9 || !viewer.isReady()) return null;
const element = document.querySelector('.neuroglancer-rendered-data-panel');
if (element === null) return null;  // the layout is still being (re)built
const panel = element.getBoundingClientRect();
return [panel.left, panel.top, panel.right, panel.bottom].map(v => v * window.devicePixelRatio);
"""


@pytest.fixture
def served_dataset(tmp_path):
    """A (z, y, x) = (40, 64, 96) uint8 volume, 5 nm voxels at z offset 100 nm, dark with one bright box."""
    data = np.full(SHAPE, DARK, dtype=np.uint8)
    data[CUBE] = BRIGHT
    path = DatasetPath.parse(tmp_path / "data" / "cell.zarr" / "volumes" / "raw")
    array = create_dataset(path, SHAPE, to_world(VOXEL_SIZE), to_world(OFFSET), "uint8", chunk_shape=(32, 32, 32))
    array[array.roi] = data
    update_dataset_meta(path, complete=True)
    with serve_directory(tmp_path / "data") as base_url:
        yield f"{base_url}/cell.zarr/volumes/raw"


@pytest.fixture
def viewer():
    """A neuroglancer viewer whose local server (hosting the client) listens on 127.0.0.1."""
    neuroglancer.set_server_bind_address("127.0.0.1")
    try:
        yield neuroglancer.Viewer()
    finally:
        neuroglancer.stop()


def bounding_box(mask: np.ndarray) -> tuple[int, int, int, int]:
    """(top, left, height, width) of the True pixels."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    assert rows.size and cols.size, "nothing of the data is drawn"
    return int(rows[0]), int(cols[0]), int(rows[-1] - rows[0] + 1), int(cols[-1] - cols[0] + 1)


def test_neuroglancer_reads_dataset_metadata_and_draws_it(served_dataset, viewer, tmp_path):
    with viewer.txn() as state:
        state.layers["raw"] = neuroglancer.ImageLayer(source=f"zarr://{served_dataset}")
        state.layout = "xy"
        state.show_axis_lines = False
        state.show_scale_bar = False
        state.show_default_annotations = False

    with headless_chromium() as driver:
        driver.get(viewer.get_viewer_url())
        client = wait_for(lambda: driver.execute_script(READ_CLIENT), "neuroglancer to load the dataset")
        assert "error" not in client, f"neuroglancer could not open {served_dataset}: {client['error']}"
        dimensions = wait_for(lambda: viewer.state.dimensions.to_json(), "the client to report its dimensions")
        # Zoom only now: a zoom set before the client knows the voxel size would be taken as metres per pixel.
        zoom = 1 / PIXELS_PER_VOXEL
        with viewer.txn() as state:
            state.cross_section_scale = zoom
        panel = wait_for(lambda: driver.execute_script(DRAWN_PANEL, zoom), "neuroglancer to draw the data")
        screenshot = driver.get_screenshot_as_png()
    (tmp_path / "neuroglancer.png").write_bytes(screenshot)

    # The zarr v3 group with OME 0.5 multiscales metadata: axes z, y, x of 5 nm each.
    assert client["canonicalUrl"].endswith("|zarr3:")
    assert client["names"] == ["z", "y", "x"]
    assert dimensions == {axis: [v * 1e-9, "m"] for axis, v in zip("zyx", VOXEL_SIZE)}
    # Bounds in 5 nm voxels: exactly funlib's ROI, [offset, offset + shape * voxel] (the OME translation is the
    # centre of the first voxel, which is how neuroglancer reads it).
    assert client["lower"] == pytest.approx([o / v for o, v in zip(OFFSET, VOXEL_SIZE)])
    assert client["upper"] == pytest.approx([o / v + s for o, v, s in zip(OFFSET, VOXEL_SIZE, SHAPE)])

    # The one data panel shows the first two dimensions, z to the right and y down, through the volume's centre
    # (inside the cube): a dark rectangle of 40 x 64 voxels with the bright box at z 10..30, y 8..40, drawn at
    # 4 pixels per voxel. Only the middle of the panel is looked at, away from its buttons.
    left, top, right, bottom = panel
    middle_x, middle_y, half_width, half_height = (left + right) / 2, (top + bottom) / 2, 300, 200
    pixels = np.asarray(Image.open(io.BytesIO(screenshot)).convert("RGB")).astype(int)
    pixels = pixels[
        int(middle_y - half_height) : int(middle_y + half_height),
        int(middle_x - half_width) : int(middle_x + half_width),
    ]
    bright = (pixels > 200).all(axis=-1)
    data = bright | (pixels < 60).all(axis=-1)
    data_top, data_left, data_height, data_width = bounding_box(data)
    cube_top, cube_left, cube_height, cube_width = bounding_box(bright)
    z, y, px = CUBE[0], CUBE[1], PIXELS_PER_VOXEL
    assert (data_height, data_width) == pytest.approx((SHAPE[1] * px, SHAPE[0] * px), abs=2)
    assert (cube_height, cube_width) == pytest.approx(((y.stop - y.start) * px, (z.stop - z.start) * px), abs=2)
    assert (cube_top - data_top, cube_left - data_left) == pytest.approx((y.start * px, z.start * px), abs=2)
    assert bright.sum() == pytest.approx(cube_height * cube_width, rel=0.02)
    assert data.sum() == pytest.approx(data_height * data_width, rel=0.02)
