"""`incasem-like mesh`: surface meshes of the objects of an object-id dataset, for neuroglancer and other viewers.

Input: the object-id dataset that `incasem-like objects` writes (`--labels-out`); its object table gives each
object's bounding box, so no pass over the volume is needed to find the objects. A segmentation without that table
(e.g. a binary one) is refused with the `objects` command to run first: meshes need object ids.

Each object's surface is `incasem_like.ops.surfaces.object_mesh` on its bounding-box crop padded by `step_size`
voxels: marching cubes (zmesh) on the binary object mask, then `--smooth` Taubin iterations (default: the same as
for the surface areas of `objects`; 0 keeps the raw marching-cubes vertices, which lie on voxel faces: the mesh
spans the object's bounding box, exactly before simplification), then simplification: quadric edge collapse
(zmesh's fast quadric mesh reduction) towards 1/`--simplify` of the triangles (default 4; 1 keeps them all, and the
mesh's area is then the CSV's), each collapse within `--max-error` sample spacings of the surface (default 0.25:
small objects keep their shape, and the area of a smooth object changes by under 0.1%). `--step-size N` samples
every N-th voxel for coarse meshes (faces then lie halfway between samples, within N/2 voxels of the voxel faces).
Vertices are world coordinates in nm (the dataset offset applied), written in x, y, z order; triangles are
counter-clockwise seen from outside, so normals point out.

Output folder OUT:
- `neuroglancer/`: precomputed legacy meshes. `info` = {"@type": "neuroglancer_legacy_mesh"}; per object a
  manifest `<id>:0` = {"fragments": ["<id>.frag"]} and the fragment `<id>.frag`: uint32 vertex count, float32
  x, y, z per vertex (nm), uint32 vertex indices, 3 per triangle (little endian). In neuroglancer, add
  `precomputed://<URL of OUT/neuroglancer>` as a second source of the object-id segmentation layer.
- `ply/<id>.ply`: binary little-endian PLY (float x, y, z in nm; faces as uchar count + int indices).
- `obj/<id>.obj` (with `--formats ... obj`): Wavefront OBJ, vertices in nm.
- `summary.json`: objects, meshes, vertices, triangles, parameters, units.
- `.incasem_run/`: the run's progress, lock and per-block counts (the folder's `FolderOutput` bookkeeping).

Blockwise on daisy workers: a block meshes the objects whose bounding box starts in it (reading crops that may
reach into other blocks); rerunning the command skips finished blocks. `neuroglancer/info` and `summary.json` are
written last, so an unfinished folder never looks complete.
"""

import json
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from daisy import Block

from incasem_like.blockwise.launchers import Launcher
from incasem_like.blockwise.outputs import FolderOutput, StageOutput
from incasem_like.blockwise.runner import run_stage
from incasem_like.blockwise.stage import BlockLayout, BlockwiseStage
from incasem_like.core.bounds import Voxels
from incasem_like.core.errors import FieldError
from incasem_like.core.files import write_atomically
from incasem_like.core.geometry import Coordinate, Roi
from incasem_like.ops.surfaces import (
    MAX_ERROR,
    SMOOTH_ITERATIONS,
    Iterations,
    Reduction,
    SimplifyError,
    object_mesh,
)
from incasem_like.stages.objects import DEFAULT_BLOCK, crops_reach, load_object_table
from incasem_like.store.datasets import DatasetPath, dataset_meta, update_dataset_meta
from incasem_like.store.object_table import save_npz

Format = Literal["neuroglancer", "ply", "obj"]
FORMATS = ("neuroglancer", "ply", "obj")
DEFAULT_FORMATS: tuple[Format, ...] = ("neuroglancer", "ply")
NEUROGLANCER_INFO = {"@type": "neuroglancer_legacy_mesh"}
#: the default triangle reduction of the mesh files
SIMPLIFY = 4


# --- file formats (vertices x, y, z in nm) -----------------------------------------------------------------------
def neuroglancer_fragment(vertices: np.ndarray, triangles: np.ndarray) -> bytes:
    """A precomputed legacy mesh fragment: uint32 vertex count, float32 vertices, uint32 indices."""
    return struct.pack("<I", len(vertices)) + vertices.astype("<f4").tobytes() + triangles.astype("<u4").tobytes()


def ply_bytes(vertices: np.ndarray, triangles: np.ndarray, comment: str) -> bytes:
    header = (
        "ply\nformat binary_little_endian 1.0\n"
        f"comment {comment}\n"
        f"element vertex {len(vertices)}\nproperty float x\nproperty float y\nproperty float z\n"
        f"element face {len(triangles)}\nproperty list uchar int vertex_indices\nend_header\n"
    )
    faces = np.empty(len(triangles), dtype=[("count", "u1"), ("indices", "<i4", (3,))])
    faces["count"], faces["indices"] = 3, triangles
    return header.encode("ascii") + vertices.astype("<f4").tobytes() + faces.tobytes()


def obj_text(vertices: np.ndarray, triangles: np.ndarray, comment: str) -> str:
    lines = [f"# {comment}"]
    lines += [f"v {x:.3f} {y:.3f} {z:.3f}" for x, y, z in vertices]
    lines += [f"f {a} {b} {c}" for a, b, c in triangles + 1]
    return "\n".join(lines) + "\n"


def write_mesh_files(folder: Path, object_id: int, vertices: np.ndarray, triangles: np.ndarray, formats) -> None:
    """One object's mesh (vertices x, y, z in nm) in each format; a manifest only after its fragment."""
    comment = f"incasem-like object {object_id}; vertices x y z in nm"
    if "neuroglancer" in formats:
        write_atomically(folder / "neuroglancer" / f"{object_id}.frag", neuroglancer_fragment(vertices, triangles))
        write_atomically(folder / "neuroglancer" / f"{object_id}:0", json.dumps({"fragments": [f"{object_id}.frag"]}))
    if "ply" in formats:
        write_atomically(folder / "ply" / f"{object_id}.ply", ply_bytes(vertices, triangles, comment))
    if "obj" in formats:
        write_atomically(folder / "obj" / f"{object_id}.obj", obj_text(vertices, triangles, comment))


# --- the stage ---------------------------------------------------------------------------------------------------
class MeshStage(BlockwiseStage):
    """Object-id dataset -> mesh files in the folder `output`; `block` in voxels, `step_size`, `smooth`, `simplify`
    (the reduction) and `max_error` as in `incasem_like.ops.surfaces.object_mesh`."""

    task_name = "mesh"

    labels: str
    #: fingerprint of the objects run that wrote `labels` (filled in by `make_meshes`): new ids are another run
    labels_run: str = ""
    output: str
    formats: tuple[Format, ...] = DEFAULT_FORMATS
    step_size: Voxels = 1
    smooth: Iterations = SMOOTH_ITERATIONS
    simplify: Reduction = SIMPLIFY
    max_error: SimplifyError = MAX_ERROR
    block: Voxels = DEFAULT_BLOCK

    @property
    def folder(self) -> Path:
        return Path(self.output)

    def outputs(self) -> list[StageOutput]:
        return [FolderOutput(self.folder)]

    @property
    def results_dir(self) -> Path:
        """Per-block counts (run state, beside the files)."""
        return self.outputs()[0].run_dir / "blocks"

    def result_path(self, index: tuple[int, ...]) -> Path:
        return self.results_dir / ("b_" + "_".join(map(str, index)) + ".npz")

    def layout(self) -> BlockLayout:
        if not self.formats:
            raise FieldError(f"{{formats}}: give at least one of {', '.join(FORMATS)}")
        labels, table = load_object_table(self.labels)
        block = Coordinate((self.block,) * 3) * labels.voxel_size
        return BlockLayout(
            labels.roi, block, crops_reach(table, self.step_size) * labels.voxel_size, labels.voxel_size, block
        )

    def create_outputs(self, layout: BlockLayout) -> None:
        for name in self.formats:
            (self.folder / name).mkdir(parents=True, exist_ok=True)
        self.results_dir.mkdir(parents=True)

    def block_processor(self) -> Callable[[Block], None]:
        labels, table = load_object_table(self.labels)
        voxel_size = labels.voxel_size

        def read(begin: np.ndarray, end: np.ndarray) -> np.ndarray:
            return labels.to_ndarray(
                Roi(labels.offset + Coordinate(begin) * voxel_size, Coordinate(end - begin) * voxel_size)
            )

        def process(block: Block) -> None:
            begin = np.array((block.write_roi.begin - labels.offset) / voxel_size)
            end = begin + np.array(block.write_roi.shape / voxel_size)
            owned = table.starting_in(begin, end)
            sizes = np.zeros((len(owned), 2), np.int64)
            for k, (row, mask, crop_begin) in enumerate(table.crops(owned, begin, end, self.step_size, read)):
                corner = table.offset + crop_begin * table.voxel_size
                vertices, triangles = object_mesh(
                    mask, table.voxel_size, corner, self.step_size, self.smooth, self.simplify, self.max_error
                )
                if len(triangles):
                    write_mesh_files(self.folder, row + 1, vertices[:, ::-1], triangles, self.formats)
                sizes[k] = len(vertices), len(triangles)
            index = tuple(int(i) for i in begin // self.block)
            save_npz(self.result_path(index), ids=owned + 1, sizes=sizes)

        return process


# --- the command -------------------------------------------------------------------------------------------------
def _record_in_container(labels: DatasetPath, meshes: Path) -> None:
    """Name the neuroglancer meshes in the object-id dataset's attributes when they lie in its container, so
    `incasem-like view` adds them to its segmentation layer."""
    container, meshes = labels.container.resolve(), meshes.resolve()
    if meshes.is_relative_to(container):
        update_dataset_meta(labels, meshes=meshes.relative_to(container).as_posix())


@dataclass(frozen=True)
class MeshResult:
    folder: Path
    summary: dict
    #: the runner's summary of the blockwise run (None when the folder was already complete)
    run: dict | None


def make_meshes(
    stage: MeshStage,
    workers: int = 1,
    overwrite: bool = False,
    progress: bool = True,
    launcher: Launcher | None = None,
) -> MeshResult:
    """The `mesh` command: run (or resume) `stage`, then write `neuroglancer/info` and `summary.json`. An existing
    folder is replaced only with `overwrite`, and only if this command wrote it."""
    stage.layout()  # a bad input is named before anything is touched
    stage = stage.model_copy(
        update={"labels_run": dataset_meta(DatasetPath.parse(stage.labels)).get("fingerprint", "")}
    )
    run = run_stage(stage, workers=workers, overwrite=overwrite, launcher=launcher, progress=progress)
    summary_path = stage.folder / "summary.json"
    if run.get("already_complete") and summary_path.exists():
        return MeshResult(stage.folder, json.loads(summary_path.read_text()), None)
    id_parts, size_parts = [np.zeros(0, np.int64)], [np.zeros((0, 2), np.int64)]
    for path in sorted(stage.results_dir.glob("b_*.npz")):
        with np.load(path) as result:
            id_parts.append(result["ids"])
            size_parts.append(result["sizes"])
    ids, sizes = np.concatenate(id_parts), np.concatenate(size_parts)
    summary = {
        "labels": stage.labels,
        "objects": len(ids),
        "meshes": int((sizes[:, 1] > 0).sum()),
        "smaller_than_step_size": int((sizes[:, 1] == 0).sum()),
        "vertices": int(sizes[:, 0].sum()),
        "triangles": int(sizes[:, 1].sum()),
        "formats": list(stage.formats),
        "step_size": stage.step_size,
        "smooth_iterations": stage.smooth,
        "simplify": stage.simplify,
        "max_error": stage.max_error,
        "units": "nm",
        "vertex_axes": ["x", "y", "z"],
    }
    if "neuroglancer" in stage.formats:
        write_atomically(stage.folder / "neuroglancer" / "info", json.dumps(NEUROGLANCER_INFO))
        _record_in_container(DatasetPath.parse(stage.labels), stage.folder / "neuroglancer")
    write_atomically(summary_path, json.dumps(summary, indent=2))
    return MeshResult(stage.folder, summary, run)
