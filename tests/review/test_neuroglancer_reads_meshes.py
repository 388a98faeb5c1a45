"""The official neuroglancer client draws the meshes `incasem-like mesh` writes (zmesh surfaces, simplified).

A ball of object ids is meshed into the container (`objects`, then `mesh`), the container is served over HTTP on
127.0.0.1 and `view_state`'s segmentation layer (object ids + the precomputed legacy meshes as second source) is
opened in headless Chromium in the 3D view with the ball's segment selected: the mesh source loads without error
and the ball is drawn, a disc of its size in its segment's colour in the middle of the panel.
"""

import io

import neuroglancer
import numpy as np
import pytest
from PIL import Image

from incasem_like.review.view import view_state
from incasem_like.stages.mesh import MeshStage, make_meshes
from incasem_like.stages.objects import find_objects
from tests.browser import headless_chromium, missing_browser, serve_directory, wait_for
from tests.stages.test_objects import write_volume

pytestmark = pytest.mark.skipif(missing_browser() is not None, reason=f"browser tests: {missing_browser()}")

# Each source's load state once all have loaded or failed (else null).
READ_SOURCES = """
const layer = window.viewer?.layerManager.managedLayers[0]?.layer;
if (layer === undefined || layer === null) return null;
const states = layer.dataSources.map(source => source.loadState);
if (states.some(state => state === undefined)) return null;
return states.map(state => state.error === undefined ? 'ok' : String(state.error.message ?? state.error));
"""

# The 3D panel's rectangle in screenshot pixels once everything is drawn at 3D zoom arguments[0] (else null).
DRAWN_PANEL = """
const viewer = window.viewer;
const zoom = viewer.perspectiveNavigationState.zoomFactor.value;
if (Math.abs(zoom - arguments[0]) > 1e-9 || !viewer.isReady()) return null;
const element = document.querySelector('.neuroglancer-rendered-data-panel');
if (element === null) return null;
const panel = element.getBoundingClientRect();
return [panel.left, panel.top, panel.right, panel.bottom].map(v => v * window.devicePixelRatio);
"""


@pytest.fixture
def container(tmp_path):
    """cell.zarr with one ball of radius 12 voxels (5 nm) as object 1 and its meshes in meshes/ball."""
    centres = np.indices((40, 40, 40)) + 0.5
    ball = (((centres - 20) ** 2).sum(axis=0) <= 12**2).astype(np.uint8)
    seg = write_volume(tmp_path / "cell.zarr/volumes/seg", ball, voxel_size=np.array([5, 5, 5]))
    find_objects(str(seg), tmp_path / "objects.csv", str(seg) + "_ids", block=64, chunk=16, progress=False)
    stage = MeshStage(labels=str(seg) + "_ids", output=str(tmp_path / "cell.zarr/meshes/ball"))
    assert make_meshes(stage, progress=False).summary["meshes"] == 1
    return tmp_path / "cell.zarr"


@pytest.fixture
def viewer():
    neuroglancer.set_server_bind_address("127.0.0.1")
    try:
        yield neuroglancer.Viewer()
    finally:
        neuroglancer.stop()


def test_neuroglancer_draws_the_mesh_of_a_selected_object(container, viewer, tmp_path):
    with serve_directory(container) as base_url:
        state, _ = view_state(container, ["volumes/seg_ids"], base_url)
        (layer,) = state["layers"]
        assert layer["source"][1] == f"precomputed://{base_url}/meshes/ball/neuroglancer"
        layer["segments"] = ["1"]
        state.update(layout="3d", showAxisLines=False, showDefaultAnnotations=False, showScaleBar=False)
        viewer.set_state(neuroglancer.ViewerState(state))
        with headless_chromium() as driver:
            driver.get(viewer.get_viewer_url())
            sources = wait_for(lambda: driver.execute_script(READ_SOURCES), "neuroglancer to load both sources")
            assert sources == ["ok", "ok"], sources
            wait_for(lambda: viewer.state.dimensions.to_json(), "the client to report its dimensions")
            with viewer.txn() as txn:  # 60 voxels per panel height: the ball (24 voxels across) fills 40% of it
                txn.projection_scale = 60
            panel = wait_for(lambda: driver.execute_script(DRAWN_PANEL, 60), "neuroglancer to draw the mesh")
            screenshot = driver.get_screenshot_as_png()
    (tmp_path / "mesh.png").write_bytes(screenshot)

    left, top, right, bottom = (int(v) for v in panel)
    pixels = np.asarray(Image.open(io.BytesIO(screenshot)).convert("RGB")).astype(int)[top:bottom, left:right]
    lit = pixels.sum(axis=-1) > 60  # the ball, shaded in its segment colour, on the black background
    height, width = lit.shape
    assert lit[height // 2 - 5 : height // 2 + 5, width // 2 - 5 : width // 2 + 5].all(), "no mesh in the middle"
    rows = np.flatnonzero(lit[:, width // 4 : 3 * width // 4].any(axis=1))  # away from the panel's corner labels
    assert rows[-1] - rows[0] + 1 == pytest.approx(height * 24 / 60, rel=0.15)  # the ball's diameter, 24 voxels
