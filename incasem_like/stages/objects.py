"""`incasem-like objects`: connected components of a segmentation and per-object statistics in nm, blockwise.

Objects are the connected components of the foreground `segmentation > 0` (uint8 0/1 or any integer labels;
touching instances of a label volume become one object) with **face connectivity** (6 neighbours, scipy's default
structure). The object ids equal one `scipy.ndimage.label` call over the whole volume exactly: ids 1..N numbered in
raster order (z, y, x) of each object's first voxel, whatever the block size or the number of workers.

Three steps, each resumable; nothing holds the whole volume:

1. `FragmentsStage` (blocks on daisy workers): `block_fragments` of each block -> block-local fragment ids in a
   scratch dataset, plus per-fragment partial sums, bounding box and first voxel, and the block's six boundary
   planes of fragment ids (`incasem_like.ops.components`).
2. merge (this process, on the per-block results only): `merge_fragments` unites the fragments that touch across
   block faces into objects; the lookup table fragment -> object id and the object table (without surfaces) are
   saved in the scratch folder, keyed by the fragments run they come from.
3. `RelabelStage` (blocks): the global ids written to the object-id dataset, and the surface of each object whose
   bounding box starts in the block, from a crop of the object's bounding box padded by one voxel (`object_mesh`
   with `SMOOTH_ITERATIONS` Taubin steps, which remove the voxel staircase that otherwise inflates the area of
   curved surfaces by ~9%; balls of radius 4-16 voxels come within 3% of 4 pi r^2).

With a seed distance (`objects --split`) touching objects are separated first, by the rule of
`incasem_like.ops.instances` (cores at least the seed distance from the background, grown through the foreground a
bounded number of face steps; foreground no seed reaches is an instance of its own), in five steps whose values
each depend on a bounded neighbourhood, so the ids are again independent of the block size and the workers:
`SeedsStage` (the seed classes, context the seed distance + the reach), the components of cores and unreached
foreground (steps 1-2 above, on the seed classes), `GrowStage` (the seeds' global ids grown, context the reach,
with per-instance partial statistics), a merge of those statistics by id (`merge_fragments`, which numbers the
instances by their first voxel in raster order like components), and the relabel step on the instances.

Every blockwise step runs through the runner like every stage: their outputs (the scratch fragments, the object-id
dataset) are locked, resumed or replaced with their fingerprints. The scratch data live in a hidden folder of the
container (`<container>/.incasem_objects/<dataset name>/`), deleted once the table is written; the object table
(`.incasem_objects.npz`, which `incasem-like mesh` reads) sits in the object-id dataset's group.

Statistics (CSV, one row per object, units in the header): voxel count; volume = count x voxel volume (nm^3);
surface area (nm^2); centroid and bounding box (offset of its first corner and shape, nm); principal axis lengths
2 sqrt(5 lambda) from the eigenvalues lambda of the covariance of the voxel centres (nm^2; the full axes of a solid
ellipsoid); whether the object touches the dataset's border (it may continue outside); the morphometrics of
`incasem_like.ops.morphometrics`: surface-to-volume ratio (1/nm), sphericity, equivalent diameter, the major
axis's direction (unit vector z, y, x), the 2D sections across `section_axis` (count, mean and sd of the first
and second axis lengths and the perimeter), the skeleton's length and branches, and the distances to the nearest
voxel of another class (`other`) and to a cell mask's outside (`mask`), looked for up to `max_distance` nm (the
relabel step reads that much around each crop; farther is inf). All are measured on the object's whole crop in
the block that owns it, so they too are independent of the block size.

The object ids are uint32 (uint64 for volumes with more than 2^33 voxels), kind "labels". Memory per worker: a
relabel block reads the ids of the block and up to `CROP_REACH` voxels past it (for the crops of the objects
starting in it; ~130 MB for blocks of 256), and a surface needs its object's bounding box (~9 bytes per voxel of
it): fine for organelles, not for a cell-wide network.
"""

import hashlib
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Annotated, ClassVar, Literal

import numpy as np
from daisy import Block
from pydantic import Field

from incasem_like.blockwise.launchers import Launcher
from incasem_like.blockwise.outputs import DatasetOutput, StageOutput
from incasem_like.blockwise.runner import is_resumable, run_stage
from incasem_like.blockwise.stage import BlockLayout, BlockwiseStage, check_block
from incasem_like.core.bounds import Voxels
from incasem_like.core.errors import FieldError, UserError
from incasem_like.core.files import write_atomically
from incasem_like.core.geometry import Coordinate, Roi
from incasem_like.ops.components import STAT_KEYS, block_fragments, boundary, merge_fragments, touching_pairs
from incasem_like.ops.instances import (
    CORE,
    UNREACHED,
    grow_seeds,
    label_statistics,
    reach_steps,
    seed_classes,
    split_context,
)
from incasem_like.ops.morphometrics import cross_sections, nearest_distance, skeleton_measures
from incasem_like.ops.surfaces import object_mesh, surface_area
from incasem_like.stages.labels import LABEL_DTYPES
from incasem_like.store.datasets import (
    DEFAULT_CHUNK,
    DatasetPath,
    Volume,
    create_dataset,
    dataset_meta,
    open_dataset,
    update_dataset_meta,
)
from incasem_like.store.object_table import MEASURE_KEYS, ObjectTable, save_npz

DEFAULT_BLOCK = 256
SEGMENTATION_DTYPES = ("bool", *LABEL_DTYPES)
#: the container's hidden folder of scratch data, one folder per object-id dataset
SCRATCH = ".incasem_objects"
#: the object table, in the object-id dataset's group
TABLE_FILE = ".incasem_objects.npz"
MERGE_FILE = "merge.npz"
INSTANCES_FILE = "instances.npz"
#: bump when the meaning of the ids, the scratch layout or the table changes
OBJECTS_FORMAT = 3
#: `--split` defaults (nm), chosen on Lucchi++ slices 125-144 (benchmarks/objects.py)
DEFAULT_SEED_DISTANCE = 25.0
DEFAULT_REACH = 150.0
#: how far distances to another class or a mask's outside are looked for (nm)
DEFAULT_MAX_DISTANCE = 1000.0
Distance = Annotated[float, Field(gt=0, le=1e6)]


def ids_dtype(shape) -> np.dtype:
    """uint32 unless the volume could hold 2^32 or more 6-connected components (at most half its voxels)."""
    return np.dtype(np.uint32) if (int(np.prod(shape)) + 1) // 2 < 2**32 else np.dtype(np.uint64)


def open_segmentation(path: str) -> Volume:
    """A segmentation or labels dataset; probabilities and images (by the kind their writer recorded) are refused:
    their connected components would be the whole volume or noise."""
    segmentation = open_dataset(path)
    kind = dataset_meta(DatasetPath.parse(path)).get("kind")
    if kind in ("probabilities", "image"):
        fix = "threshold them first (incasem-like threshold)" if kind == "probabilities" else "segment it first"
        raise UserError(
            f"{path} holds {'probabilities' if kind == 'probabilities' else 'an image'}, not a segmentation; {fix}"
        )
    if segmentation.dtype.name not in SEGMENTATION_DTYPES:
        raise UserError(
            f"{path}: dtype {segmentation.dtype} is not a segmentation (needs an integer dtype: 0 = background, "
            "> 0 = object); threshold probabilities first (incasem-like threshold)"
        )
    return segmentation


class ObjectsBlocks(BlockwiseStage):
    """What the two blockwise steps share: the segmentation, the object-id dataset `labels`, blocks on the
    segmentation's grid (`block`, a multiple of the chunk edge `chunk`, both in voxels) and the scratch folder."""

    segmentation: str
    labels: str
    block: Voxels = DEFAULT_BLOCK
    chunk: Voxels = DEFAULT_CHUNK
    #: split touching objects (`incasem_like.ops.instances`): the seed distance in nm, None for plain components
    seed_distance: Distance | None = None
    reach: Distance = DEFAULT_REACH

    #: the step's name (its scratch folder)
    step: ClassVar[str] = ""

    def scratch_root(self) -> Path:
        labels = DatasetPath.parse(self.labels)
        return labels.container / SCRATCH / labels.name

    def scratch_dataset(self, name: str) -> DatasetPath:
        labels = DatasetPath.parse(self.labels)
        return DatasetPath(labels.container, f"{SCRATCH}/{labels.name}/{name}")

    def fragments(self) -> DatasetPath:
        return self.scratch_dataset("fragments")

    def steps(self, voxel_size: np.ndarray) -> int:
        return reach_steps(self.reach, voxel_size)

    def results_dir(self, step: str | None = None) -> Path:
        return self.scratch_root() / f"{step or self.step}_blocks"

    def result_path(self, index: tuple[int, ...], step: str | None = None) -> Path:
        return self.results_dir(step) / ("b_" + "_".join(map(str, index)) + ".npz")

    def segmentation_layout(self, context: Coordinate = Coordinate((0, 0, 0))) -> BlockLayout:
        check_block(self.block, self.chunk)
        segmentation = open_segmentation(self.segmentation)
        voxel_size = segmentation.voxel_size
        return BlockLayout(
            total_write_roi=segmentation.roi,
            block_write_shape=Coordinate((self.block,) * 3) * voxel_size,
            context=context * voxel_size,
            voxel_size=voxel_size,
            output_chunk_shape=Coordinate((self.chunk,) * 3) * voxel_size,
        )

    def command_fingerprint(self) -> str:
        """The whole command's identity, recorded in the object-id dataset (its table outlives the scratch data)."""
        config = {"format": OBJECTS_FORMAT, **self.model_dump(mode="json")}
        return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:16]

    def grid_shape(self, volume: Volume) -> tuple[int, ...]:
        return tuple(-(-s // self.block) for s in volume.shape)

    def grid_index(self, roi: Roi, volume: Volume) -> tuple[int, ...]:
        """The block grid position of a block's write ROI."""
        return tuple(int(i) for i in (roi.begin - volume.offset) / volume.voxel_size / self.block)


def read_box(volume: Volume, begin: np.ndarray, end: np.ndarray, fill: int = 0) -> np.ndarray:
    """The voxel box [begin, end) of a dataset (voxel indices, may reach outside it; `fill` there)."""
    result = np.full(tuple(int(e - b) for b, e in zip(begin, end)), fill, dtype=volume.dtype)
    low, high = np.maximum(begin, 0), np.minimum(end, volume.shape)
    if (high > low).all():
        roi = Roi(volume.offset + Coordinate(low) * volume.voxel_size, Coordinate(high - low) * volume.voxel_size)
        result[tuple(slice(a, b) for a, b in zip(low - begin, high - begin))] = volume[roi]
    return result


class SeedsStage(ObjectsBlocks):
    """Split step 1: the seed classes (`seed_classes`: cores, unreached foreground) into a scratch dataset; a block
    reads the segmentation with the core test's and the growth's context."""

    task_name = "objects_seeds"
    step = "seeds"

    def outputs(self) -> list[StageOutput]:
        return [DatasetOutput(self.scratch_dataset("seeds"))]

    def context(self, voxel_size: np.ndarray) -> np.ndarray:
        assert self.seed_distance is not None
        return split_context(voxel_size, self.seed_distance, self.steps(voxel_size))[0]

    def layout(self) -> BlockLayout:
        voxel_size = np.array(open_segmentation(self.segmentation).voxel_size_nm)
        return self.segmentation_layout(Coordinate(int(c) for c in self.context(voxel_size)))

    def create_outputs(self, layout: BlockLayout) -> None:
        segmentation = open_segmentation(self.segmentation)
        create_dataset(
            self.scratch_dataset("seeds"),
            segmentation.shape,
            segmentation.voxel_size,
            segmentation.offset,
            np.uint8,
            (self.chunk,) * 3,
        )

    def block_processor(self) -> Callable[[Block], None]:
        assert self.seed_distance is not None
        segmentation = open_dataset(self.segmentation)
        seeds = open_dataset(self.scratch_dataset("seeds"), mode="r+", require_complete=False)
        voxel_size = np.array(segmentation.voxel_size_nm)
        context, steps = self.context(voxel_size), self.steps(voxel_size)
        seed_distance = self.seed_distance

        def process(block: Block) -> None:
            begin = np.array((block.write_roi.begin - segmentation.offset) / segmentation.voxel_size)
            end = begin + np.array(block.write_roi.shape / segmentation.voxel_size)
            # the dataset's outside is not background: read only what lies inside it
            low, high = np.maximum(begin - context, 0), np.minimum(end + context, segmentation.shape)
            classes = seed_classes(read_box(segmentation, low, high) > 0, voxel_size, seed_distance, steps)
            seeds[block.write_roi] = classes[tuple(slice(b - a, e - a) for a, b, e in zip(low, begin, end))]

        return process


class FragmentsStage(ObjectsBlocks):
    """Step 1: per block, block-local fragment ids (scratch dataset), their partial statistics and the block's
    boundary planes."""

    task_name = "objects_fragments"
    step = "fragments"

    def outputs(self) -> list[StageOutput]:
        return [DatasetOutput(self.fragments())]

    def layout(self) -> BlockLayout:
        return self.segmentation_layout()

    def create_outputs(self, layout: BlockLayout) -> None:
        segmentation = open_segmentation(self.segmentation)
        create_dataset(
            self.fragments(),
            segmentation.shape,
            segmentation.voxel_size,
            segmentation.offset,
            np.uint32,
            (self.chunk,) * 3,
        )
        shutil.rmtree(self.results_dir(), ignore_errors=True)
        self.results_dir().mkdir(parents=True)

    def block_processor(self) -> Callable[[Block], None]:
        segmentation = open_dataset(self.segmentation if self.seed_distance is None else self.scratch_dataset("seeds"))
        fragments = open_dataset(self.fragments(), mode="r+", require_complete=False)

        def process(block: Block) -> None:
            begin = np.array((block.write_roi.begin - segmentation.offset) / segmentation.voxel_size)
            local, stats = block_fragments(segmentation[block.write_roi] > 0, begin, segmentation.shape)
            fragments[block.write_roi] = local
            save_npz(self.result_path(self.grid_index(block.write_roi, segmentation)), **stats, **boundary(local))

        return process


class GrowStage(ObjectsBlocks):
    """Split step 3: the seeds' global ids grown through the foreground (`grow_seeds`) plus the unreached
    components, into a scratch dataset, and each block's per-instance partial statistics."""

    task_name = "objects_grow"
    step = "grow"

    def outputs(self) -> list[StageOutput]:
        return [DatasetOutput(self.scratch_dataset("instances"))]

    def layout(self) -> BlockLayout:
        voxel_size = np.array(open_segmentation(self.segmentation).voxel_size_nm)
        return self.segmentation_layout(Coordinate((self.steps(voxel_size),) * 3))

    def create_outputs(self, layout: BlockLayout) -> None:
        segmentation = open_segmentation(self.segmentation)
        create_dataset(
            self.scratch_dataset("instances"),
            segmentation.shape,
            segmentation.voxel_size,
            segmentation.offset,
            ids_dtype(segmentation.shape),
            (self.chunk,) * 3,
        )
        shutil.rmtree(self.results_dir(), ignore_errors=True)
        self.results_dir().mkdir(parents=True)

    def block_processor(self) -> Callable[[Block], None]:
        segmentation, seeds = open_dataset(self.segmentation), open_dataset(self.scratch_dataset("seeds"))
        instances = open_dataset(self.scratch_dataset("instances"), mode="r+", require_complete=False)
        seed_ids = fragment_reader(self, instances.dtype)
        steps = self.steps(np.array(segmentation.voxel_size_nm))

        def process(block: Block) -> None:
            begin = np.array((block.write_roi.begin - segmentation.offset) / segmentation.voxel_size)
            end = begin + np.array(block.write_roi.shape / segmentation.voxel_size)
            low, high = begin - steps, end + steps
            classes, ids = read_box(seeds, low, high), seed_ids(low, high)
            grown = grow_seeds(np.where(classes == CORE, ids, 0), read_box(segmentation, low, high) > 0, steps)
            grown = np.where(classes == UNREACHED, ids, grown)[(slice(steps, -steps),) * 3]
            instances[block.write_roi] = grown
            present, stats = label_statistics(grown, begin, segmentation.shape)
            save_npz(self.result_path(self.grid_index(block.write_roi, segmentation)), present=present, **stats)

        return process


class RelabelStage(ObjectsBlocks):
    """Step 3: global ids into the object-id dataset, and the surfaces of the objects whose bounding box starts in
    the block (crops are read from the fragments through the lookup table, so no block waits for another). A
    block reads its objects' crops: the context is the largest object's extent."""

    task_name = "objects_relabel"
    step = "relabel"

    #: the axis perpendicular to the 2D sections
    section_axis: Literal["z", "y", "x"] = "z"
    #: a segmentation of another class (distance to its nearest voxel) and a cell mask (distance to its outside)
    other: str | None = None
    mask: str | None = None
    max_distance: Distance = DEFAULT_MAX_DISTANCE

    def outputs(self) -> list[StageOutput]:
        return [DatasetOutput.parse(self.labels)]

    def merged_table(self) -> ObjectTable:
        return ObjectTable.load(self.scratch_root() / "objects.npz")

    def distance_margin(self, voxel_size: np.ndarray) -> np.ndarray:
        """Voxels around an object's crop that its distances read (none without `other` or `mask`)."""
        if self.other is None and self.mask is None:
            return np.zeros(3, np.int64)
        return np.ceil(self.max_distance / voxel_size - 1e-9).astype(np.int64)

    def layout(self) -> BlockLayout:
        margin = self.distance_margin(np.array(open_segmentation(self.segmentation).voxel_size_nm))
        return self.segmentation_layout(crops_reach(self.merged_table(), step=1) + Coordinate(int(m) for m in margin))

    def check_companions(self) -> None:
        """`other` and `mask` must lie on the segmentation's grid: same voxel size, offset and shape."""
        segmentation = open_segmentation(self.segmentation)
        for name, path in (("other", self.other), ("mask", self.mask)):
            if path is None:
                continue
            companion = open_segmentation(path)
            for what, mine, theirs in (
                ("voxel size", segmentation.voxel_size_nm, companion.voxel_size_nm),
                ("offset", segmentation.offset_nm, companion.offset_nm),
                ("shape", segmentation.shape, companion.shape),
            ):
                if tuple(mine) != tuple(theirs):
                    raise FieldError(
                        f"{{{name}}} {path}: {what} {tuple(theirs)} differs from {self.segmentation}'s "
                        f"{tuple(mine)}; give a dataset on the segmentation's grid (resample or crop it)"
                    )

    def create_outputs(self, layout: BlockLayout) -> None:
        segmentation = open_segmentation(self.segmentation)
        create_dataset(
            DatasetPath.parse(self.labels),
            segmentation.shape,
            segmentation.voxel_size,
            segmentation.offset,
            ids_dtype(segmentation.shape),
            (self.chunk,) * 3,
            attrs={
                "kind": "labels",
                "objects_run": self.command_fingerprint(),
                "source": {
                    "dataset": self.segmentation,
                    "objects": {"block": self.block, "connectivity": 6}
                    | (
                        {} if self.seed_distance is None else {"seed_distance": self.seed_distance, "reach": self.reach}
                    ),
                },
            },
        )
        shutil.rmtree(self.results_dir(), ignore_errors=True)
        self.results_dir().mkdir(parents=True)

    def block_processor(self) -> Callable[[Block], None]:
        labels = open_dataset(self.labels, mode="r+", require_complete=False)
        global_ids = fragment_reader(self, labels.dtype) if self.seed_distance is None else instance_reader(self)
        table = self.merged_table()
        fragments = open_dataset(self.fragments())
        voxel_size = fragments.voxel_size

        companions = {name: open_dataset(path) for name, path in (("other", self.other), ("mask", self.mask)) if path}
        margin = self.distance_margin(table.voxel_size)
        axis = "zyx".index(self.section_axis)

        def distance(mask: np.ndarray, crop_begin: np.ndarray, name: str) -> float:
            """Distance to the other class or to the mask's outside (not the dataset's) within `max_distance`."""
            if name not in companions:
                return np.nan
            low, high = crop_begin - margin, crop_begin + np.array(mask.shape) + margin
            values = read_box(companions[name], low, high, fill=int(name == "mask"))
            target = values > 0 if name == "other" else values == 0
            found = nearest_distance(np.pad(mask, [(m, m) for m in margin]), target, table.voxel_size)
            return found if found <= self.max_distance else np.inf

        def process(block: Block) -> None:
            begin = np.array((block.write_roi.begin - fragments.offset) / voxel_size)
            end = begin + np.array(block.write_roi.shape / voxel_size)
            labels[block.write_roi] = global_ids(begin, end)
            owned = table.starting_in(begin, end)
            areas, measures = np.empty(len(owned)), np.empty((len(owned), len(MEASURE_KEYS)))
            for k, (_, mask, crop_begin) in enumerate(table.crops(owned, begin, end, 1, global_ids)):
                corner = table.offset + crop_begin * table.voxel_size
                areas[k] = surface_area(*object_mesh(mask, table.voxel_size, corner))
                sections = cross_sections(mask, table.voxel_size, axis)
                skeleton = skeleton_measures(mask, table.voxel_size)
                distances = (distance(mask, crop_begin, "other"), distance(mask, crop_begin, "mask"))
                measures[k] = [*sections.values(), *skeleton, *distances]
            save_npz(
                self.result_path(self.grid_index(block.write_roi, fragments)),
                ids=owned + 1,
                areas=areas,
                measures=measures,
            )

        return process


def fragment_reader(stage: ObjectsBlocks, dtype) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    """`read(begin, end)`: the merged components' global ids in the voxel box [begin, end) (0 outside the
    dataset), block by block through the lookup table of the merge."""
    fragments = open_dataset(stage.fragments())
    with np.load(stage.scratch_root() / MERGE_FILE) as merged:
        lut, offsets = merged["lut"], merged["offsets"]
    voxel_size, grid = fragments.voxel_size, stage.grid_shape(fragments)
    block_shape = voxel_size * stage.block

    def read(begin: np.ndarray, end: np.ndarray) -> np.ndarray:
        roi = Roi(fragments.offset + Coordinate(begin) * voxel_size, Coordinate(end - begin) * voxel_size)
        result = np.zeros(roi.shape / voxel_size, dtype=dtype)
        inside = roi.intersect(fragments.roi)
        first = stage.grid_index(inside, fragments)
        last = stage.grid_index(Roi(inside.end - voxel_size, voxel_size), fragments)
        for index in np.ndindex(*(b - a + 1 for a, b in zip(first, last))):
            index = tuple(a + i for a, i in zip(first, index))
            part = Roi(fragments.offset + Coordinate(index) * block_shape, block_shape).intersect(inside)
            b = int(np.ravel_multi_index(index, grid))
            lookup = lut[offsets[b] : offsets[b + 1] + 1].astype(dtype)
            lookup[0] = 0
            target = part - roi.begin
            slices = tuple(slice(s, e) for s, e in zip(target.begin / voxel_size, target.end / voxel_size))
            result[slices] = lookup[fragments[part]]
        return result

    return read


def instance_reader(stage: ObjectsBlocks) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    """`read(begin, end)`: the split instances' final ids (numbered by their first voxel) in a voxel box."""
    instances = open_dataset(stage.scratch_dataset("instances"))
    with np.load(stage.scratch_root() / INSTANCES_FILE) as merged:
        renumber = merged["renumber"].astype(instances.dtype)

    def read(begin: np.ndarray, end: np.ndarray) -> np.ndarray:
        return renumber[read_box(instances, begin, end)]

    return read


def crops_reach(table: ObjectTable, step: int) -> Coordinate:
    """Voxels past a block that its objects' crops (`crop_box` with `step`) may read: the context of the stages
    that cut them."""
    extent = (table.bbox_end - table.bbox_begin).max(axis=0) if len(table) else np.zeros(3, np.int64)
    return Coordinate(int(e) + 2 * step for e in extent)


# --- the command -------------------------------------------------------------------------------------------------
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


def check_inputs(fragments: FragmentsStage, csv_path: Path) -> None:
    """Validate everything (segmentation, block layout, seed distance, output names); writes nothing."""
    fragments.layout()
    segmentation = open_segmentation(fragments.segmentation)
    voxel = max(segmentation.voxel_size_nm)
    if fragments.seed_distance is not None and segmentation.dtype.itemsize > 1:
        raise UserError(
            f"{fragments.segmentation}: dtype {segmentation.dtype} holds labels, not a binary segmentation (0/1), "
            "which --split cuts into instances; split a segmentation (predict's), or leave out --split"
        )
    if fragments.seed_distance is not None and fragments.seed_distance < voxel:
        raise FieldError(
            f"{{seed_distance}} {fragments.seed_distance:g} nm is smaller than a voxel of {fragments.segmentation} "
            f"({voxel:g} nm): every foreground voxel would be a seed; use at least {voxel:g} nm"
        )
    if csv_path.suffix.lower() != ".csv":
        raise UserError(f"{csv_path}: the statistics table must be a .csv file, e.g. mito_objects.csv")
    if csv_path.is_dir():
        raise UserError(f"{csv_path} is a folder; give the name of the .csv file to write")


def _merge(fragments: FragmentsStage, run: str) -> None:
    """Step 2: the lookup table fragment -> object id and the object table (without surfaces), unless the
    fragments run `run` has already been merged."""
    merge_path = fragments.scratch_root() / MERGE_FILE
    if merge_path.exists():
        with np.load(merge_path) as merged:
            if str(merged["fragments_run"]) == run:
                return
    volume = open_dataset(fragments.fragments())
    grid = fragments.grid_shape(volume)
    results, pairs = [], []
    for b, index in enumerate(np.ndindex(*grid)):
        with np.load(fragments.result_path(index)) as result:
            results.append({key: result[key] for key in STAT_KEYS})
            for axis, name in enumerate("zyx"):
                neighbour = tuple(i + (a == axis) for a, i in enumerate(index))
                if neighbour[axis] < grid[axis]:
                    with np.load(fragments.result_path(neighbour)) as following:
                        touching = touching_pairs(result[f"far_{name}"], following[f"near_{name}"])
                    pairs.append((b, int(np.ravel_multi_index(neighbour, grid)), touching))
    lut, offsets, statistics = merge_fragments(results, pairs)
    _save_table(fragments, volume, statistics)
    save_npz(merge_path, lut=lut, offsets=offsets, fragments_run=np.array(run))


def _merge_instances(grow: GrowStage) -> None:
    """Split step 4: the per-block statistics of the instances united by id (`merge_fragments`, renumbering them
    by their first voxel like components) into the object table, and the map instance id -> final id."""
    volume = open_dataset(grow.scratch_dataset("instances"))
    results, rows = [], []
    for b, index in enumerate(np.ndindex(*grow.grid_shape(volume))):
        with np.load(grow.result_path(index)) as result:
            results.append({key: result[key] for key in STAT_KEYS})
            present = result["present"]
        rows.append(np.stack([np.full(len(present), b), np.arange(1, len(present) + 1), present], axis=1))
    block, local, instance = np.concatenate(rows).T if rows else np.zeros((3, 0), np.int64)
    order = np.argsort(instance, kind="stable")
    same = np.flatnonzero(instance[order][1:] == instance[order][:-1])
    pairs = [
        (int(block[order[k]]), int(block[order[k + 1]]), np.array([[local[order[k]], local[order[k + 1]]]]))
        for k in same
    ]
    lut, offsets, statistics = merge_fragments(results, pairs)
    renumber = np.zeros(int(instance.max(initial=0)) + 1, np.int64)
    renumber[instance] = lut[offsets[block] + local]
    _save_table(grow, volume, statistics)
    save_npz(grow.scratch_root() / INSTANCES_FILE, renumber=renumber)


def _save_table(stage: ObjectsBlocks, volume: Volume, statistics: dict[str, np.ndarray]) -> None:
    table = ObjectTable(
        voxel_size=np.array(volume.voxel_size_nm),
        offset=np.array(volume.offset_nm),
        shape=np.array(volume.shape),
        surface_area_nm2=np.full(len(statistics["voxel_count"]), np.nan),
        measures=np.full((len(statistics["voxel_count"]), len(MEASURE_KEYS)), np.nan),
        **statistics,
    )
    table.save(stage.scratch_root() / "objects.npz")


def table_path(labels: DatasetPath) -> Path:
    return labels.group_path / TABLE_FILE


def load_object_table(path: DatasetPath | str) -> tuple[Volume, ObjectTable]:
    """A complete object-id dataset written by `objects` and its object table."""
    path = path if isinstance(path, DatasetPath) else DatasetPath.parse(path)
    labels = open_dataset(path)
    if not table_path(path).exists():
        raise UserError(
            f"{path}: no object table ({TABLE_FILE}); it was not written by incasem-like objects. "
            f"Run `incasem-like objects {path} OBJECTS.csv --labels-out OBJECT_IDS` and use OBJECT_IDS"
        )
    try:
        return labels, ObjectTable.load(table_path(path))
    except KeyError as missing:
        raise UserError(
            f"{path}: its object table has no {missing} (an older incasem-like wrote it); rerun "
            "`incasem-like objects` with --overwrite to rewrite it"
        ) from None


def _finished_table(relabel: RelabelStage) -> ObjectTable | None:
    """The table of this exact command when its object ids are complete and the table written, else None."""
    path = DatasetPath.parse(relabel.labels)
    meta = DatasetOutput(path).meta()
    if meta.get("objects_run") != relabel.command_fingerprint() or not meta.get("complete"):
        return None
    return ObjectTable.load(table_path(path)) if table_path(path).exists() else None


def _finish_table(relabel: RelabelStage) -> ObjectTable:
    """The merged table with every object's surface area and measures from the relabel blocks, saved beside the
    ids."""
    table = relabel.merged_table()
    areas, measures = table.surface_area_nm2.copy(), table.measures.copy()
    for path in relabel.results_dir().glob("b_*.npz"):
        with np.load(path) as result:
            areas[result["ids"] - 1] = result["areas"]
            measures[result["ids"] - 1] = result["measures"]
    if np.isnan(areas).any():
        raise RuntimeError(f"{relabel.labels}: objects without a surface after the relabel step")
    table = replace(table, surface_area_nm2=areas, measures=measures)
    labels = DatasetPath.parse(relabel.labels)
    table.save(table_path(labels))
    update_dataset_meta(labels, objects=len(table))
    return table


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
    seed_distance: float | None = None,
    reach: float = DEFAULT_REACH,
    measures: dict | None = None,
) -> ObjectsResult:
    """The `objects` command: object ids into `labels`, statistics into `csv_path`; resumable. With a
    `seed_distance` (nm) touching objects are split (`incasem_like.ops.instances`, growing `reach` nm).
    `measures` are the relabel step's options: `section_axis`, `other`, `mask`, `max_distance`.

    An existing CSV is replaced only with `overwrite`, unless it is exactly the table of this finished command
    (then there is nothing to do)."""
    start = time.perf_counter()
    config = {"segmentation": segmentation, "labels": labels, "block": block, "chunk": chunk}
    config |= {"seed_distance": seed_distance, "reach": reach}
    fragments, relabel = FragmentsStage(**config), RelabelStage(**config, **(measures or {}))
    labels_path, csv_path = DatasetPath.parse(labels), Path(csv_path)
    check_inputs(fragments, csv_path)
    relabel.check_companions()
    finished = _finished_table(relabel) if not overwrite else None
    if csv_path.exists() and not overwrite:
        if finished is None or csv_path.read_text() != finished.csv_text():
            raise UserError(f"{csv_path} already exists; pass --overwrite to replace it")
        shutil.rmtree(fragments.scratch_root(), ignore_errors=True)  # left if a finished run was stopped there
        return ObjectsResult(labels_path, csv_path, len(finished), {}, 0.0, False)
    summaries = {}
    if finished is None:
        ours = DatasetOutput(labels_path).meta().get("objects_run") == relabel.command_fingerprint()
        if labels_path.exists() and not ours and not overwrite:
            raise UserError(
                f"{labels_path} already exists and was not written by this exact command; pass --overwrite to "
                "replace it"
            )

        def run_scratch(stage: ObjectsBlocks) -> None:
            """A scratch step: replaced when another run wrote it, else resumed."""
            output = stage.outputs()[0]
            assert isinstance(output, DatasetOutput)
            scratch = overwrite or (output.path.exists() and not is_resumable(stage))
            summaries[stage.step] = run_stage(
                stage, workers=workers, overwrite=scratch, launcher=launcher, progress=progress
            )

        if seed_distance is not None:
            run_scratch(SeedsStage(**config))
        run_scratch(fragments)
        _merge(fragments, DatasetOutput(fragments.fragments()).meta()["fingerprint"])
        if seed_distance is not None:
            grow = GrowStage(**config)
            run_scratch(grow)
            _merge_instances(grow)
        summaries["relabel"] = run_stage(
            relabel, workers=workers, overwrite=overwrite, launcher=launcher, progress=progress
        )
        finished = _finish_table(relabel)
    shutil.rmtree(fragments.scratch_root(), ignore_errors=True)
    write_atomically(csv_path, finished.csv_text())
    return ObjectsResult(labels_path, csv_path, len(finished), summaries, time.perf_counter() - start, True)
