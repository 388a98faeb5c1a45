"""`incasem-like objects`: connected components of a segmentation and per-object statistics in nm, blockwise.

Objects are the connected components of the foreground `segmentation > 0` (uint8 0/1 or any integer labels;
touching instances of a label volume become one object) with **face connectivity** (6 neighbours, scipy's default
structure). The object ids equal one `scipy.ndimage.label` call over the whole volume exactly: ids 1..N numbered in
raster order (z, y, x) of each object's first voxel, whatever the block size or the number of workers.

Three steps, resumable (rerunning the command skips finished blocks); nothing holds the whole volume:

1. `objects_fragments` (blocks on daisy workers): `scipy.ndimage.label` of each block -> block-local fragment
   ids in a scratch dataset, plus per-fragment partial sums (voxel count, coordinate sums, second moments),
   bounding box and first voxel, and the block's six boundary planes of fragment ids.
2. merge (this process, on the per-block results only): the fragments that touch across block faces (a block's
   far plane against its neighbour's near plane), union-find over them (connected components of the fragment
   graph), global ids in first-voxel order, statistics summed per object.
3. `objects_relabel` (blocks): the global ids written to the output dataset, and the surface of each object whose
   bounding box starts in the block, from a crop of the object's bounding box padded by one voxel.

Statistics (CSV, one row per object, units in the header): voxel count; volume = count x voxel volume (nm^3);
surface area (nm^2) of the object's mesh (`object_mesh`: marching cubes at level 0.5 on the binary object mask,
then `SMOOTH_ITERATIONS` Taubin smoothing steps that remove the voxel staircase, which otherwise inflates the area
of curved surfaces by ~9%; balls of radius 4-16 voxels come within 3% of 4 pi r^2, +1% on average); centroid and
bounding box (offset of its first corner and shape, nm); principal axis lengths 2 sqrt(5 lambda) from the
eigenvalues lambda of the covariance of the voxel centres (nm^2; the full axes of a solid ellipsoid); whether the
object touches the dataset's border (it may continue outside).

Layout: the object ids go to a dataset (uint32, or uint64 for volumes with more than 2^33 voxels, kind "labels");
the scratch data and the object table (`objects.npz`, which `incasem-like mesh` reads) live in its group under
`.incasem_objects/`. The dataset is marked complete only when all ids and the table are written; the scratch
fragments are then deleted. Memory per worker: a relabel block reads the ids of the block and up to `CROP_REACH`
voxels past it (for the crops of the objects starting in it; ~130 MB for blocks of 256), and a surface needs its
object's bounding box (~9 bytes per voxel of it): fine for organelles, not for a cell-wide network.
"""

import csv
import hashlib
import io
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import zarr
from daisy import Block
from scipy import ndimage, sparse
from scipy.sparse.csgraph import connected_components
from skimage.measure import marching_cubes

from incasem_like import __version__
from incasem_like.blockwise.launchers import Launcher
from incasem_like.blockwise.runner import refuse_if_running, run_stage
from incasem_like.blockwise.stage import BlockLayout, BlockwiseStage, check_block
from incasem_like.core.errors import UserError
from incasem_like.core.files import atomic_file, write_atomically
from incasem_like.core.geometry import Coordinate, Roi
from incasem_like.stages.labels import LABEL_DTYPES
from incasem_like.stages.mask import FACE_CONNECTIVITY
from incasem_like.store.datasets import (
    DEFAULT_CHUNK,
    META_KEY,
    DatasetPath,
    Volume,
    create_dataset,
    dataset_meta,
    open_dataset,
    remove_dataset,
    update_dataset_meta,
)

DEFAULT_BLOCK = 256
SEGMENTATION_DTYPES = ("bool", *LABEL_DTYPES)
#: the group inside the object-id dataset holding the scratch data and the object table
SCRATCH = ".incasem_objects"
TABLE_FILE = "objects.npz"
#: voxels past its far faces that a block reads to cut the crops of the objects starting in it
CROP_REACH = 64
#: bump when the meaning of the ids, the scratch layout or the table changes
OBJECTS_FORMAT = 1
#: Taubin smoothing of marching-cubes surfaces (iterations; lambda and mu of Taubin 1995)
SMOOTH_ITERATIONS = 10
TAUBIN_LAMBDA, TAUBIN_MU = 0.5, -0.53
#: the per-fragment statistics of `block_fragments`
STAT_KEYS = ("count", "sums", "moments", "bbox_begin", "bbox_end", "first")
#: second moments stored per fragment/object: sums of z*z, z*y, z*x, y*y, y*x, x*x (voxel indices)
_MOMENT_PAIRS = ((0, 0), (0, 1), (0, 2), (1, 1), (1, 2), (2, 2))

CSV_COLUMNS = (
    "object_id",
    "voxel_count",
    "volume_nm3",
    "surface_area_nm2",
    "centroid_z_nm",
    "centroid_y_nm",
    "centroid_x_nm",
    "bbox_offset_z_nm",
    "bbox_offset_y_nm",
    "bbox_offset_x_nm",
    "bbox_shape_z_nm",
    "bbox_shape_y_nm",
    "bbox_shape_x_nm",
    "axis_major_nm",
    "axis_middle_nm",
    "axis_minor_nm",
    "touches_border",
)


# --- surfaces ----------------------------------------------------------------------------------------------------
def crop_box(bbox_begin: np.ndarray, bbox_end: np.ndarray, step: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """(begin, end) voxels of the crop around a bounding box for marching cubes with `step`: `step` voxels of
    background before and at least `step` after it, the far end extended so that the last sample (every `step`-th
    voxel) is the crop's last voxel; the surface then closes around the object."""
    begin = np.asarray(bbox_begin) - step
    shape = np.asarray(bbox_end) - np.asarray(bbox_begin) + 2 * step
    shape += -(shape - 1) % step
    return begin, begin + shape


def object_mesh(
    mask: np.ndarray,
    voxel_size: np.ndarray,
    corner: np.ndarray,
    step: int = 1,
    smooth_iterations: int = SMOOTH_ITERATIONS,
) -> tuple[np.ndarray, np.ndarray]:
    """Closed surface of a bool crop (`crop_box`): vertices (n, 3) in nm, world z, y, x, and triangles (m, 3),
    counter-clockwise seen from outside. `corner` is the world position (nm) of the crop's first voxel corner.

    Marching cubes at level 0.5 on the binary mask (vertices on the faces between object and background voxels;
    `step` > 1 samples every step-th voxel, for coarse meshes), then `smooth_iterations` Taubin steps. Empty arrays
    if the samples miss the object (objects smaller than `step`)."""
    if not mask[::step, ::step, ::step].any():
        return np.zeros((0, 3)), np.zeros((0, 3), dtype=np.int64)
    voxel_size = np.asarray(voxel_size, dtype=np.float64)
    vertices, triangles, _, _ = marching_cubes(
        mask.astype(np.float32), level=0.5, spacing=tuple(voxel_size), step_size=step
    )
    vertices = taubin_smooth(vertices.astype(np.float64), triangles, smooth_iterations)
    vertices += np.asarray(corner, dtype=np.float64) + voxel_size / 2  # crop voxel 0's centre in the world
    triangles = triangles.astype(np.int64)
    if signed_volume(vertices, triangles) > 0:  # z, y, x is a mirror image of x, y, z: make the x, y, z winding CCW
        triangles = triangles[:, ::-1]
    return vertices, triangles


def taubin_smooth(vertices: np.ndarray, triangles: np.ndarray, iterations: int) -> np.ndarray:
    """Taubin's lambda/mu smoothing (uniform neighbour weights): removes the staircase, barely shrinking."""
    if iterations == 0 or len(triangles) == 0:
        return vertices
    count = len(vertices)
    edges = np.concatenate([triangles[:, [0, 1]], triangles[:, [1, 2]], triangles[:, [2, 0]]])
    adjacency = sparse.coo_matrix((np.ones(len(edges)), (edges[:, 0], edges[:, 1])), shape=(count, count)).tocsr()
    adjacency = ((adjacency + adjacency.T) > 0).astype(np.float64)
    neighbour_mean = sparse.diags(1.0 / np.asarray(adjacency.sum(axis=1)).ravel()) @ adjacency
    for _ in range(iterations):
        for factor in (TAUBIN_LAMBDA, TAUBIN_MU):
            vertices = vertices + factor * (neighbour_mean @ vertices - vertices)
    return vertices


def signed_volume(vertices: np.ndarray, triangles: np.ndarray) -> float:
    """Volume enclosed by a closed mesh, positive when its triangles are counter-clockwise seen from outside in
    the vertices' own axis order."""
    a, b, c = (vertices[triangles[:, i]] for i in range(3))
    return float(np.einsum("ij,ij->i", a, np.cross(b, c)).sum() / 6)


def surface_area(vertices: np.ndarray, triangles: np.ndarray) -> float:
    a, b, c = (vertices[triangles[:, i]] for i in range(3))
    return float(np.linalg.norm(np.cross(b - a, c - a), axis=1).sum() / 2)


# --- per-block pure functions ------------------------------------------------------------------------------------
def block_fragments(foreground: np.ndarray, begin: np.ndarray, volume_shape) -> tuple[np.ndarray, dict]:
    """Label one block (face connectivity) and return (local ids, per-fragment partial statistics).

    `begin` is the block's first voxel in the volume (voxel indices), `volume_shape` the volume's shape; the
    statistics use global voxel indices: count, sums (n, 3), second moments (n, 6: `_MOMENT_PAIRS`), bbox_begin and
    bbox_end (n, 3, end exclusive) and `first` (raster index of the fragment's first voxel in the volume)."""
    local, count = ndimage.label(foreground, structure=FACE_CONNECTIVITY)
    flat = np.flatnonzero(local)
    ids = local.ravel()[flat]
    coords = [c + b for c, b in zip(np.unravel_index(flat, local.shape), begin)]
    weights = [np.bincount(ids, weights=c, minlength=count + 1)[1:] for c in coords]
    moments = [np.bincount(ids, weights=coords[i] * coords[j], minlength=count + 1)[1:] for i, j in _MOMENT_PAIRS]
    boxes = ndimage.find_objects(local, max_label=count)
    starts = np.array([[s.start for s in box] for box in boxes], dtype=np.int64).reshape(count, 3)
    stops = np.array([[s.stop for s in box] for box in boxes], dtype=np.int64).reshape(count, 3)
    _, first = np.unique(ids, return_index=True)  # `flat` is in raster order: each fragment's first voxel
    stats = {
        "count": np.bincount(ids, minlength=count + 1)[1:].astype(np.int64),
        "sums": np.stack(weights, axis=1).reshape(count, 3),
        "moments": np.stack(moments, axis=1).reshape(count, 6),
        "bbox_begin": starts + begin,
        "bbox_end": stops + begin,
        "first": np.ravel_multi_index(tuple(c[first] for c in coords), volume_shape).astype(np.int64),
    }
    return local.astype(np.uint32), stats


def touching_pairs(last_plane: np.ndarray, next_plane: np.ndarray) -> np.ndarray:
    """Unique (id in `last_plane`, id in `next_plane`) pairs of face-adjacent foreground voxels of two planes."""
    both = (last_plane > 0) & (next_plane > 0)
    pairs = np.stack([last_plane[both], next_plane[both]], axis=1).astype(np.int64)
    return np.unique(pairs, axis=0) if len(pairs) else pairs.reshape(0, 2)


def boundary(local: np.ndarray) -> dict[str, np.ndarray]:
    """A block's first (`near_z`, ...) and last (`far_z`, ...) planes along each axis."""
    planes = {}
    for axis, name in enumerate("zyx"):
        planes[f"near_{name}"] = np.take(local, 0, axis=axis)
        planes[f"far_{name}"] = np.take(local, -1, axis=axis)
    return planes


def save_npz(path: Path, **arrays: Any) -> None:
    """Write arrays to an .npz atomically: readers see the old file or the complete new one."""
    with atomic_file(path) as file:
        np.savez_compressed(file, **arrays)


# --- the object table --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ObjectTable:
    """Per-object statistics in voxels of the object-id dataset; row i is object id i + 1."""

    voxel_size: np.ndarray  # (3,) nm
    offset: np.ndarray  # (3,) nm, the dataset's first voxel corner
    shape: np.ndarray  # (3,) voxels, the dataset's
    voxel_count: np.ndarray  # (n,)
    centroid: np.ndarray  # (n, 3) mean voxel index
    covariance: np.ndarray  # (n, 3, 3) voxel index covariance
    bbox_begin: np.ndarray  # (n, 3)
    bbox_end: np.ndarray  # (n, 3), exclusive
    surface_area_nm2: np.ndarray  # (n,), NaN until the surfaces are computed

    def __len__(self) -> int:
        return len(self.voxel_count)

    def save(self, path: Path) -> None:
        save_npz(path, **{field.name: getattr(self, field.name) for field in fields(self)})

    @classmethod
    def load(cls, path: Path) -> "ObjectTable":
        with np.load(path) as data:
            return cls(**{field.name: data[field.name] for field in fields(cls)})

    def starting_in(self, begin: np.ndarray, end: np.ndarray) -> np.ndarray:
        """Rows of the objects whose bounding box starts in the voxel box [begin, end)."""
        return np.flatnonzero(((self.bbox_begin >= begin) & (self.bbox_begin < end)).all(axis=1))

    def crops(self, rows: np.ndarray, begin: np.ndarray, end: np.ndarray, step: int, read: Callable):
        """(row, bool mask, crop begin) of each object in `rows`, which start in the block [begin, end) (voxels),
        on its `crop_box`. `read(begin, end)` gives the ids in a voxel box (0 outside the dataset); one read
        covers the block and the crops up to `CROP_REACH` voxels past it, objects reaching further are read on
        their own (reading each object alone would decompress whole chunks per object)."""
        if len(rows) == 0:
            return
        boxes = [crop_box(self.bbox_begin[row], self.bbox_end[row], step) for row in rows]
        region_begin = np.asarray(begin) - step
        region_end = np.minimum(np.max([box_end for _, box_end in boxes], axis=0), np.asarray(end) + CROP_REACH)
        region = read(region_begin, region_end)
        for row, (box_begin, box_end) in zip(rows, boxes):
            if (box_end <= region_end).all():
                ids = region[tuple(slice(b, e) for b, e in zip(box_begin - region_begin, box_end - region_begin))]
            else:
                ids = read(box_begin, box_end)
            yield row, ids == row + 1, box_begin

    def principal_axes_nm(self) -> np.ndarray:
        """(n, 3) full axis lengths 2 sqrt(5 lambda), largest first, from the covariance in nm^2."""
        scale = np.diag(self.voxel_size.astype(np.float64))
        eigenvalues = np.linalg.eigvalsh(scale @ self.covariance @ scale) if len(self) else np.zeros((0, 3))
        return 2 * np.sqrt(5 * np.clip(eigenvalues[:, ::-1], 0, None))

    def csv_text(self) -> str:
        """The statistics table: one row per object, physical units (nm) named in the header."""
        voxel_size, offset = self.voxel_size.astype(np.float64), self.offset.astype(np.float64)
        centroid = offset + (self.centroid + 0.5) * voxel_size
        bbox_offset = offset + self.bbox_begin * voxel_size
        bbox_shape = (self.bbox_end - self.bbox_begin) * voxel_size
        axes = self.principal_axes_nm()
        border = (self.bbox_begin == 0).any(axis=1) | (self.bbox_end == self.shape).any(axis=1)
        text = io.StringIO()
        writer = csv.writer(text, lineterminator="\n")
        writer.writerow(CSV_COLUMNS)
        for i in range(len(self)):
            writer.writerow(
                [i + 1, int(self.voxel_count[i]), int(self.voxel_count[i]) * int(np.prod(self.voxel_size))]
                + [_number(v) for v in (self.surface_area_nm2[i], *centroid[i], *bbox_offset[i], *bbox_shape[i])]
                + [_number(v) for v in axes[i]]
                + [int(border[i])]
            )
        return text.getvalue()


def _number(value: float) -> str:
    return f"{value:.10g}"


def merge_fragments(
    fragments: list[dict], pairs: list[tuple[int, int, np.ndarray]], volume: Volume
) -> tuple[np.ndarray, np.ndarray, ObjectTable]:
    """Union-find over all fragments: (lut, offsets, table).

    `fragments[b]` are block b's statistics (blocks in raster order), `pairs` (block a, block b, (m, 2) local ids)
    the fragments that touch. Provisional id = offsets[b] + local id; `lut[provisional]` is the global id, numbered
    by each object's first voxel in raster order (0 stays 0)."""
    counts = np.array([len(f["count"]) for f in fragments], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(counts)])
    total = int(offsets[-1])
    edges = [offsets[a] + p[:, 0] - 1 for a, _, p in pairs], [offsets[b] + p[:, 1] - 1 for _, b, p in pairs]
    sources, targets = (np.concatenate(e) if e else np.zeros(0, np.int64) for e in edges)
    graph = sparse.coo_matrix((np.ones(len(sources), bool), (sources, targets)), shape=(total, total))
    objects, component = connected_components(graph, directed=False) if total else (0, np.zeros(0, np.int64))

    def stacked(key: str, width: int) -> np.ndarray:
        return np.concatenate([f[key] for f in fragments]).reshape(total, width) if total else np.zeros((0, width))

    first = np.full(objects, np.iinfo(np.int64).max)
    np.minimum.at(first, component, stacked("first", 1)[:, 0].astype(np.int64))
    global_id = np.empty(objects, np.int64)
    global_id[np.argsort(first)] = np.arange(1, objects + 1)
    index = global_id[component] - 1  # each fragment's object, 0-based

    def summed(values: np.ndarray) -> np.ndarray:
        return np.stack([np.bincount(index, weights=v, minlength=objects) for v in values.T], axis=1)

    voxel_count = np.bincount(index, weights=stacked("count", 1)[:, 0], minlength=objects).astype(np.int64)
    centroid = summed(stacked("sums", 3)) / np.maximum(voxel_count, 1)[:, None]
    second = summed(stacked("moments", 6)) / np.maximum(voxel_count, 1)[:, None]
    covariance = np.empty((objects, 3, 3))
    for k, (i, j) in enumerate(_MOMENT_PAIRS):
        covariance[:, i, j] = covariance[:, j, i] = second[:, k] - centroid[:, i] * centroid[:, j]
    bbox_begin = np.full((objects, 3), np.iinfo(np.int64).max)
    bbox_end = np.zeros((objects, 3), np.int64)
    np.minimum.at(bbox_begin, index, stacked("bbox_begin", 3).astype(np.int64))
    np.maximum.at(bbox_end, index, stacked("bbox_end", 3).astype(np.int64))
    table = ObjectTable(
        voxel_size=np.array(volume.voxel_size),
        offset=np.array(volume.offset),
        shape=np.array(volume.shape),
        voxel_count=voxel_count,
        centroid=centroid,
        covariance=covariance,
        bbox_begin=bbox_begin,
        bbox_end=bbox_end,
        surface_area_nm2=np.full(objects, np.nan),
    )
    return np.concatenate([[0], global_id[component]]).astype(np.int64), offsets, table


# --- the three blockwise steps -----------------------------------------------------------------------------------
def ids_dtype(shape) -> np.dtype:
    """uint32 unless the volume could hold 2^32 or more 6-connected components (at most half its voxels)."""
    return np.dtype(np.uint32) if (int(np.prod(shape)) + 1) // 2 < 2**32 else np.dtype(np.uint64)


def open_segmentation(path: str) -> Volume:
    segmentation = open_dataset(path)
    if segmentation.dtype.name not in SEGMENTATION_DTYPES:
        raise UserError(
            f"{path}: dtype {segmentation.dtype} is not a segmentation (needs an integer dtype: 0 = background, "
            "> 0 = object); threshold probabilities first (incasem-like threshold)"
        )
    return segmentation


class ObjectsStep(BlockwiseStage):
    """What the steps share (and what the whole command's fingerprint is made of): the segmentation, the object-id
    dataset, blocks on the segmentation's grid (`block`, a multiple of the chunk edge `chunk`, both in voxels)."""

    segmentation: str
    labels: str
    block: int = DEFAULT_BLOCK
    chunk: int = DEFAULT_CHUNK

    #: the step's group under `.incasem_objects/` (its progress and per-block results)
    step: ClassVar[str] = ""

    def scratch_root(self) -> Path:
        return DatasetPath.parse(self.labels).group_path / SCRATCH

    def scratch(self, step: str) -> DatasetPath:
        labels = DatasetPath.parse(self.labels)
        return DatasetPath(labels.container, f"{labels.name}/{SCRATCH}/{step}")

    def output_paths(self) -> list[DatasetPath]:
        return [self.scratch(self.step)]

    def results_dir(self, step: str | None = None) -> Path:
        return self.scratch(step or self.step).group_path / "blocks"

    def block_processor(self) -> Callable[[Block], None]:
        raise TypeError("ObjectsStep is the configuration its steps share; run one of the steps")

    def result_path(self, index: tuple[int, ...], step: str | None = None) -> Path:
        return self.results_dir(step) / ("b_" + "_".join(map(str, index)) + ".npz")

    def layout(self) -> BlockLayout:
        check_block(self.block, self.chunk)
        segmentation = open_segmentation(self.segmentation)
        voxel_size = segmentation.voxel_size
        return BlockLayout(
            total_write_roi=segmentation.roi,
            block_write_shape=Coordinate((self.block,) * 3) * voxel_size,
            context=Coordinate((0, 0, 0)),
            voxel_size=voxel_size,
            output_chunk_shape=Coordinate((self.chunk,) * 3) * voxel_size,
        )

    def grid_shape(self, volume: Volume) -> tuple[int, ...]:
        return tuple(-(-s // self.block) for s in volume.shape)

    def grid_index(self, roi: Roi, volume: Volume) -> tuple[int, ...]:
        """The block grid position of a block's write ROI."""
        return tuple(int(i) for i in (roi.begin - volume.offset) / volume.voxel_size / self.block)

    def create_outputs(self, layout: BlockLayout) -> None:
        group = zarr.open_group(self.scratch(self.step).group_path, mode="a")
        group.attrs[META_KEY] = {"complete": False}
        self.results_dir().mkdir()

    def fingerprint(self) -> str:
        """Identity of the whole command's result (recorded in the object-id dataset)."""
        config = {"format": OBJECTS_FORMAT, **ObjectsStep.model_validate(self.model_dump()).model_dump(mode="json")}
        return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:16]


class FragmentsStage(ObjectsStep):
    """Step 1: per block, block-local fragment ids (scratch dataset), their partial statistics and the block's
    boundary planes."""

    task_name = "objects_fragments"
    step = "fragments"

    def create_outputs(self, layout: BlockLayout) -> None:
        segmentation = open_segmentation(self.segmentation)
        path = self.scratch(self.step)
        create_dataset(
            path, segmentation.shape, segmentation.voxel_size, segmentation.offset, np.uint32, (self.chunk,) * 3
        )
        self.results_dir().mkdir()

    def block_processor(self) -> Callable[[Block], None]:
        segmentation = open_dataset(self.segmentation)
        fragments = open_dataset(self.scratch(self.step), mode="r+", require_complete=False)

        def process(block: Block) -> None:
            begin = np.array((block.write_roi.begin - segmentation.offset) / segmentation.voxel_size)
            local, stats = block_fragments(segmentation[block.write_roi] > 0, begin, segmentation.shape)
            fragments[block.write_roi] = local
            save_npz(self.result_path(self.grid_index(block.write_roi, segmentation)), **stats, **boundary(local))

        return process


class RelabelStage(ObjectsStep):
    """Step 3: global ids into the object-id dataset, and the surfaces of the objects whose bounding box starts in
    the block (crops are read from the fragments through the lookup table, so no block waits for another)."""

    task_name = "objects_relabel"
    step = "relabel"

    def block_processor(self) -> Callable[[Block], None]:
        fragments = open_dataset(self.scratch(FragmentsStage.step))
        labels = open_dataset(self.labels, mode="r+", require_complete=False)
        with np.load(self.scratch_root() / MERGE_FILE) as merged:
            lut, offsets = merged["lut"], merged["offsets"]
        table = ObjectTable.load(self.scratch_root() / TABLE_FILE)
        voxel_size, grid = fragments.voxel_size, self.grid_shape(fragments)
        block_shape = voxel_size * self.block

        def global_ids(begin: np.ndarray, end: np.ndarray) -> np.ndarray:
            """Object ids in the voxel box [begin, end) (0 outside the dataset), block by block through the lookup
            table."""
            roi = Roi(fragments.offset + Coordinate(begin) * voxel_size, Coordinate(end - begin) * voxel_size)
            result = np.zeros(roi.shape / voxel_size, dtype=labels.dtype)
            inside = roi.intersect(fragments.roi)
            first = self.grid_index(inside, fragments)
            last = self.grid_index(Roi(inside.end - voxel_size, voxel_size), fragments)
            for index in np.ndindex(*(b - a + 1 for a, b in zip(first, last))):
                index = tuple(a + i for a, i in zip(first, index))
                part = Roi(fragments.offset + Coordinate(index) * block_shape, block_shape).intersect(inside)
                b = int(np.ravel_multi_index(index, grid))
                lookup = lut[offsets[b] : offsets[b + 1] + 1].astype(labels.dtype)
                lookup[0] = 0
                target = part - roi.begin
                slices = tuple(slice(s, e) for s, e in zip(target.begin / voxel_size, target.end / voxel_size))
                result[slices] = lookup[fragments[part]]
            return result

        def process(block: Block) -> None:
            begin = np.array((block.write_roi.begin - fragments.offset) / voxel_size)
            end = begin + np.array(block.write_roi.shape / voxel_size)
            labels[block.write_roi] = global_ids(begin, end)
            owned = table.starting_in(begin, end)
            areas = np.empty(len(owned))
            for k, (_, mask, crop_begin) in enumerate(table.crops(owned, begin, end, 1, global_ids)):
                corner = np.array(fragments.offset) + crop_begin * table.voxel_size
                areas[k] = surface_area(*object_mesh(mask, table.voxel_size, corner))
            save_npz(self.result_path(self.grid_index(block.write_roi, fragments)), ids=owned + 1, areas=areas)

        return process


# --- the command -------------------------------------------------------------------------------------------------
MERGE_FILE = "merge.npz"
STEPS = (FragmentsStage, RelabelStage)


@dataclass(frozen=True)
class ObjectsResult:
    labels: DatasetPath
    csv: Path
    objects: int
    #: the runner's summary of each blockwise step (empty when the object ids were already complete)
    summaries: dict[str, dict]
    seconds: float
    #: False when the CSV already held exactly this table
    csv_written: bool


def check_inputs(config: ObjectsStep, csv_path: Path) -> None:
    """Validate everything (segmentation, block layout, output names); writes nothing."""
    config.layout()
    source, labels = (DatasetPath.parse(p).group_path.resolve() for p in (config.segmentation, config.labels))
    if source == labels or source in labels.parents or labels in source.parents:
        raise UserError(f"--labels-out {config.labels}: must be a dataset apart from the segmentation")
    if csv_path.suffix.lower() != ".csv":
        raise UserError(f"{csv_path}: the statistics table must be a .csv file, e.g. mito_objects.csv")
    if csv_path.is_dir():
        raise UserError(f"{csv_path} is a folder; give the name of the .csv file to write")


def output_state(config: ObjectsStep) -> str:
    """The object-id dataset's state: "new" (not there), "resume" (started by this exact command), "complete"
    (finished by it) or "foreign" (something else is there)."""
    labels = DatasetPath.parse(config.labels)
    if not labels.exists():
        return "new"
    try:
        meta = dataset_meta(labels)
    except (FileNotFoundError, ValueError):  # not a zarr group
        return "foreign"
    if meta.get("fingerprint") != config.fingerprint():
        return "foreign"
    return "complete" if meta.get("complete") and (config.scratch_root() / TABLE_FILE).exists() else "resume"


def prepare_output(config: ObjectsStep, overwrite: bool) -> str:
    """Create the (empty, incomplete) object-id dataset unless this exact command started it: returns "resume" or
    "complete" for this command's dataset (`output_state`), "new" when it created one. Something else at the
    name is replaced only with `overwrite` (which also restarts this command's own runs)."""
    state = output_state(config)
    if state in ("resume", "complete") and not overwrite:
        return state
    if state != "new" and not overwrite:
        raise UserError(
            f"{config.labels} already exists and was not written by this exact command; pass --overwrite to replace it"
        )
    for step in STEPS:
        refuse_if_running(config.scratch(step.step), config.labels)
    segmentation = open_segmentation(config.segmentation)
    labels = DatasetPath.parse(config.labels)
    remove_dataset(labels)
    create_dataset(
        labels,
        segmentation.shape,
        segmentation.voxel_size,
        segmentation.offset,
        ids_dtype(segmentation.shape),
        (config.chunk,) * 3,
        attrs={
            "kind": "labels",
            "fingerprint": config.fingerprint(),
            "written_by": f"incasem-like {__version__} objects",
            "source": {"dataset": config.segmentation, "objects": {"block": config.block, "connectivity": 6}},
        },
    )
    return "new"


def compute_objects(
    config: ObjectsStep, workers: int = 1, progress: bool = True, launcher: Launcher | None = None
) -> dict[str, dict]:
    """Run (or resume) the steps into a prepared object-id dataset and mark it complete; returns the runner's
    summary of each blockwise step."""
    update_dataset_meta(DatasetPath.parse(config.labels), complete=False)  # in case its table went missing
    fragments, relabel = (cls.model_validate(config.model_dump()) for cls in STEPS)
    summaries = {"fragments": run_stage(fragments, workers=workers, launcher=launcher, progress=progress)}
    if not (config.scratch_root() / MERGE_FILE).exists():
        _merge(config)
    summaries["relabel"] = run_stage(relabel, workers=workers, launcher=launcher, progress=progress)
    table = ObjectTable.load(config.scratch_root() / TABLE_FILE)
    areas = table.surface_area_nm2.copy()
    for path in config.results_dir(RelabelStage.step).glob("b_*.npz"):
        with np.load(path) as result:
            areas[result["ids"] - 1] = result["areas"]
    if np.isnan(areas).any():
        raise RuntimeError(f"{config.labels}: objects without a surface after the relabel step")
    replace(table, surface_area_nm2=areas).save(config.scratch_root() / TABLE_FILE)
    update_dataset_meta(DatasetPath.parse(config.labels), complete=True, objects=len(table))
    return summaries


def _merge(config: ObjectsStep) -> None:
    """Step 2: the lookup table fragment -> object id and the object table (without surfaces)."""
    volume = open_dataset(config.scratch(FragmentsStage.step))
    grid = config.grid_shape(volume)
    fragments, pairs = [], []
    for b, index in enumerate(np.ndindex(*grid)):
        with np.load(config.result_path(index, FragmentsStage.step)) as result:
            fragments.append({key: result[key] for key in STAT_KEYS})
            for axis, name in enumerate("zyx"):
                neighbour = tuple(i + (a == axis) for a, i in enumerate(index))
                if neighbour[axis] < grid[axis]:
                    with np.load(config.result_path(neighbour, FragmentsStage.step)) as following:
                        touching = touching_pairs(result[f"far_{name}"], following[f"near_{name}"])
                    pairs.append((b, int(np.ravel_multi_index(neighbour, grid)), touching))
    lut, offsets, table = merge_fragments(fragments, pairs, volume)
    table.save(config.scratch_root() / TABLE_FILE)
    save_npz(config.scratch_root() / MERGE_FILE, lut=lut, offsets=offsets)


def remove_scratch(config: ObjectsStep) -> None:
    """Delete the steps' scratch data (keeping the object table)."""
    for step in STEPS:
        shutil.rmtree(config.scratch(step.step).group_path, ignore_errors=True)
    (config.scratch_root() / MERGE_FILE).unlink(missing_ok=True)


def find_objects(
    segmentation: str,
    csv_path: str | Path,
    labels: str,
    block: int = DEFAULT_BLOCK,
    chunk: int = DEFAULT_CHUNK,
    workers: int = 1,
    overwrite: bool = False,
    progress: bool = True,
    launcher: Launcher | None = None,
) -> ObjectsResult:
    """The `objects` command: object ids into `labels`, statistics into `csv_path`; resumable.

    An existing CSV is replaced only with `overwrite`, unless it is exactly the table of this finished command
    (then there is nothing to do)."""
    if workers < 1:
        raise UserError(f"--workers {workers}: need at least one worker")
    start = time.perf_counter()
    config = ObjectsStep(segmentation=segmentation, labels=labels, block=block, chunk=chunk)
    csv_path = Path(csv_path)
    check_inputs(config, csv_path)
    state = output_state(config)
    if csv_path.exists() and not overwrite:
        if state != "complete" or csv_path.read_text() != _table(config).csv_text():
            raise UserError(f"{csv_path} already exists; pass --overwrite to replace it")
        remove_scratch(config)  # left behind if a finished run was stopped while cleaning up
        return ObjectsResult(DatasetPath.parse(labels), csv_path, len(_table(config)), {}, 0.0, False)
    state = prepare_output(config, overwrite)
    summaries = {} if state == "complete" else compute_objects(config, workers, progress, launcher)
    remove_scratch(config)
    table = _table(config)
    write_atomically(csv_path, table.csv_text())
    seconds = time.perf_counter() - start
    return ObjectsResult(DatasetPath.parse(labels), csv_path, len(table), summaries, seconds, True)


def _table(config: ObjectsStep) -> ObjectTable:
    return ObjectTable.load(config.scratch_root() / TABLE_FILE)


def load_object_table(path: DatasetPath | str) -> tuple[Volume, ObjectTable]:
    """A complete object-id dataset written by `objects` and its object table."""
    path = path if isinstance(path, DatasetPath) else DatasetPath.parse(path)
    labels = open_dataset(path)
    table_path = path.group_path / SCRATCH / TABLE_FILE
    if not table_path.exists():
        raise UserError(
            f"{path}: no object table ({SCRATCH}/{TABLE_FILE}); it was not written by incasem-like objects. "
            f"Run `incasem-like objects {path} OBJECTS.csv --labels-out OBJECT_IDS` and use OBJECT_IDS"
        )
    return labels, ObjectTable.load(table_path)
