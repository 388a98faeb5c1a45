"""Stages `downsample` (dataset -> new, coarser dataset) and `pyramid` (levels s1..sN inside a dataset's group).

Value rule, a pure function of one block (`downsample(data, factor, kind)`), chosen by the input's `kind`:
- image (uint8, uint16 or float32): the mean of each factor^3 cell, in the input's dtype; integer means are
  rounded to the nearest integer, halves to even (unbiased, as `np.rint`), with exact integer arithmetic.
- labels and mask (any integer dtype): the most frequent value of the cell; ties go to the larger id, so a 0/1
  mask cell that is at least half foreground becomes foreground. Only values present in the cell can appear.

Odd shapes: the output has ceil(shape / factor) voxels per axis. A cell on the far border that the input covers
only in part takes the mean (or most frequent value) of the voxels that exist; nothing is padded in. Every input
voxel counts, and the output's ROI covers the input's (reaching up to factor - 1 input voxels past its far end).

Grid: output voxel size = factor x input voxel size, offset = input offset (the first voxel's corner is shared;
funlib needs it to be a multiple of the output voxel size). An output block covers the same world ROI as the
input it reads, factor^3 input voxels per output voxel: blocks need no context and write whole output chunks.

Pyramid: level k >= 1 is the array `s{k}` of the dataset's group, 2x coarser than `s{k-1}` and computed from it by
a `PyramidLevelStage`. Level arrays are not groups, so a level run keeps its bookkeeping (fingerprint, complete)
in a small zarr group of its own, `<dataset>/.incasem_pyramid/s{k}`, with the runner's progress inside it
(`.../s{k}/.incasem_run/`), apart from the dataset's own s0 run state in `<dataset>/.incasem_run/`. Being inside
the dataset group, it goes away with the dataset when s0 is rewritten. The group's OME multiscales metadata lists
a level only once its run is complete, so an interrupted pyramid never looks complete to neuroglancer.
"""

import math
import re
import shutil
from collections.abc import Callable
from typing import Any, Literal

import numpy as np
import zarr
from daisy import Block
from pydantic import field_validator

from incasem_like.blockwise.launchers import Launcher
from incasem_like.blockwise.runner import fingerprint, refuse_if_running, run_stage
from incasem_like.blockwise.stage import BlockLayout, BlockwiseStage, check_block
from incasem_like.core.errors import UserError
from incasem_like.core.geometry import Coordinate, Roi
from incasem_like.store.datasets import (
    DEFAULT_CHUNK,
    META_KEY,
    DatasetPath,
    Volume,
    create_dataset,
    create_level,
    dataset_meta,
    open_dataset,
    remove_dataset,
    set_levels,
)

Kind = Literal["image", "labels", "mask"]
KINDS = ("image", "labels", "mask")
IMAGE_DTYPES = ("uint8", "uint16", "float32")
#: output block edge in voxels: a factor-2 block reads 256^3 input voxels
DEFAULT_BLOCK = 128
#: the group (inside the dataset group) holding one bookkeeping group per pyramid level run
PYRAMID_RUNS = ".incasem_pyramid"


# --- the pure per-block functions ----------------------------------------------------------------------------
def output_shape(shape: tuple[int, ...], factor: int) -> tuple[int, ...]:
    """ceil(shape / factor): partial cells at the far border are kept."""
    return tuple(-(-int(s) // factor) for s in shape)


def downsample(data: np.ndarray, factor: int, kind: str) -> np.ndarray:
    """Downsample a 3D block by `factor` along each axis: mean for images, most frequent value for labels/masks."""
    if factor < 1:
        raise ValueError(f"factor {factor} must be at least 1")
    return downsample_image(data, factor) if kind == "image" else downsample_labels(data, factor)


def downsample_image(data: np.ndarray, factor: int) -> np.ndarray:
    """Mean of each factor^3 cell (of the voxels that exist, at the far border), in `data`'s dtype.

    Integers are rounded to the nearest integer, halves to the even one (as `np.rint`, so no level drifts
    brighter), in exact integer arithmetic; floats are averaged in float64.
    """
    integer = np.issubdtype(data.dtype, np.integer)
    accumulate = np.float64 if not integer else np.int64 if np.issubdtype(data.dtype, np.signedinteger) else np.uint64
    sums = _cell_sums(data, factor, accumulate)
    counts = _cell_counts(data.shape, factor)
    if integer:
        quotient = sums // counts
        twice_remainder = 2 * (sums - quotient * counts)
        up = (twice_remainder > counts) | ((twice_remainder == counts) & (quotient % 2 == 1))
        return (quotient + up).astype(data.dtype)
    return (sums / counts).astype(data.dtype)


def downsample_labels(data: np.ndarray, factor: int) -> np.ndarray:
    """Most frequent value of each factor^3 cell (of the voxels that exist); ties go to the larger value."""
    out_shape = output_shape(data.shape, factor)
    if factor == 2:
        # a partial cell lacks exactly one of two slices along an axis: repeating the last slice doubles every
        # count in the cell, which changes neither its most frequent value nor its ties
        return _mode(_cells(_pad(data, factor, mode="edge"), factor), None).reshape(out_shape)
    padded, weights = _pad(data, factor), None
    if padded.shape != data.shape:
        weights = _cells(_pad(np.ones(data.shape, np.uint32), factor), factor)
    return _mode(_cells(padded, factor), weights).reshape(out_shape)


def _pad(data: np.ndarray, factor: int, mode: Any = "constant") -> np.ndarray:
    """`data` padded (zeros, or `mode`) at the far end of each axis to a multiple of `factor` (itself if one)."""
    extra = [(0, -s % factor) for s in data.shape]
    return np.pad(data, extra, mode=mode) if any(e for _, e in extra) else data


def _cell_sums(data: np.ndarray, factor: int, dtype) -> np.ndarray:
    """Sum of each factor^3 cell in `dtype` (missing voxels of partial cells count as 0), one axis at a time."""
    sums = _pad(data, factor)
    for axis in range(data.ndim):
        parts = [sums[(slice(None),) * axis + (slice(i, None, factor),)] for i in range(factor)]
        total = parts[0].astype(dtype)
        for part in parts[1:]:
            total += part
        sums = total
    return sums


def _cell_counts(shape: tuple[int, ...], factor: int) -> np.ndarray | int:
    """How many voxels of the input each output voxel's cell holds: factor^3, less in partial border cells."""
    if all(s % factor == 0 for s in shape):
        return factor ** len(shape)
    per_axis = [np.minimum(factor, s - np.arange(0, s, factor)) for s in shape]
    return math.prod(np.ix_(*per_axis))


def _cells(data: np.ndarray, factor: int) -> np.ndarray:
    """(cells, factor^3) matrix of a 3D array whose shape is a multiple of `factor`, cells in C order."""
    nz, ny, nx = (s // factor for s in data.shape)
    blocks = data.reshape(nz, factor, ny, factor, nx, factor).transpose(0, 2, 4, 1, 3, 5)
    return blocks.reshape(nz * ny * nx, factor**3)


def _mode(cells: np.ndarray, weights: np.ndarray | None) -> np.ndarray:
    """Most frequent value of each row (entries counted with `weights`, 1 if None); ties to the larger value.

    Each row is sorted, then scanned left to right (one vectorized step per column): `count` is the weight of the
    current run of equal values so far, and the best value is replaced whenever a run's count reaches the best
    count, so among equally frequent values the last, largest one wins.
    """
    if weights is None:
        values = np.sort(cells, axis=1).T.copy()
    else:
        order = np.argsort(cells, axis=1)
        values = np.take_along_axis(cells, order, axis=1).T.copy()
        weights = np.take_along_axis(weights, order, axis=1).T.copy()
    count = weights[0].copy() if weights is not None else np.ones(len(values[0]), np.uint32)
    best_value, best_count = values[0].copy(), count.copy()
    for j in range(1, len(values)):
        count = np.where(values[j] == values[j - 1], count, 0) + (weights[j] if weights is not None else 1)
        better = count >= best_count
        best_value[better] = values[j][better]
        np.maximum(count, best_count, out=best_count)
    return best_value


# --- input checks shared by both commands ---------------------------------------------------------------------
def resolve_kind(path: DatasetPath, override: str | None) -> str:
    """The value rule: `--image`/`--labels` if given, else the `kind` the dataset's writer recorded."""
    if override is not None:
        return override
    kind = dataset_meta(path).get("kind")
    if kind not in KINDS:
        raise UserError(
            f"{path}: records no kind (image, labels or mask; written by another tool?); "
            "pass --image to average it or --labels to keep label values"
        )
    return kind


def check_dtype(path: DatasetPath | str, dtype: np.dtype, kind: str) -> None:
    if kind == "image" and dtype.name not in IMAGE_DTYPES:
        raise UserError(
            f"{path}: dtype {dtype} is not an image dtype that can be averaged ({', '.join(IMAGE_DTYPES)}); "
            "pass --labels if it holds labels"
        )
    if kind != "image" and not np.issubdtype(dtype, np.integer):
        raise UserError(f"{path}: {kind} must be integers, found {dtype}; pass --image to average it instead")


def parse_int(text: str | int, option: str, minimum: int) -> int:
    """An integer command-line value >= `minimum`, else a one-line `UserError`."""
    try:
        value = int(str(text), 10)
    except ValueError:
        value = None
    if value is None or value < minimum:
        raise UserError(f"{option} {text}: must be an integer >= {minimum}")
    return value


def _check_offset(path, offset: Coordinate, voxel_size: Coordinate, what: str) -> None:
    if offset % voxel_size != Coordinate((0,) * len(offset)):
        raise UserError(
            f"{path}: offset {tuple(offset)} nm is not a multiple of the {what} voxel size {tuple(voxel_size)} nm, "
            "so the coarser grid cannot keep the offset; downsample a dataset whose offset is on that grid"
        )


class _DownsampleBlocks(BlockwiseStage):
    """Shared part: blocks on the output grid, each reading the same world ROI from the source."""

    kind: Kind
    block: int = DEFAULT_BLOCK
    chunk: int = DEFAULT_CHUNK

    @property
    def scale_factor(self) -> int:
        return 2

    def _layout(self, source_shape, source_voxel_size: Coordinate, offset: Coordinate) -> BlockLayout:
        check_block(self.block, self.chunk, " (both in output voxels)")
        voxel_size = source_voxel_size * self.scale_factor
        return BlockLayout(
            total_write_roi=Roi(offset, Coordinate(output_shape(source_shape, self.scale_factor)) * voxel_size),
            block_write_shape=Coordinate((self.block,) * 3) * voxel_size,
            context=Coordinate((0, 0, 0)),
            voxel_size=voxel_size,
            output_chunk_shape=Coordinate((self.chunk,) * 3) * voxel_size,
        )

    def open_source(self) -> Volume:
        raise NotImplementedError

    def open_target(self) -> Volume:
        raise NotImplementedError

    def block_processor(self) -> Callable[[Block], None]:
        source, target = self.open_source(), self.open_target()

        def process(block: Block) -> None:
            write = block.write_roi
            result = downsample(source[write.intersect(source.roi)], self.scale_factor, self.kind)
            assert Coordinate(result.shape) * target.voxel_size == write.shape, (result.shape, write)
            target[write] = result

        return process


class DownsampleStage(_DownsampleBlocks):
    """IN -> OUT, a new dataset `factor` times coarser along each axis; `block`/`chunk` in output voxels."""

    task_name = "downsample"

    input: str
    output: str
    factor: int = 2

    @property
    def scale_factor(self) -> int:
        return self.factor

    @field_validator("factor")
    @classmethod
    def _integer_factor(cls, factor: int) -> int:
        if factor < 2:
            raise ValueError("must be an integer >= 2")
        return factor

    def output_paths(self) -> list[DatasetPath]:
        return [DatasetPath.parse(self.output)]

    def open_source(self) -> Volume:
        source_path, output_path = DatasetPath.parse(self.input), DatasetPath.parse(self.output)
        inside = (source_path.group_path.resolve(), output_path.group_path.resolve())
        if inside[0] == inside[1] or inside[0] in inside[1].parents or inside[1] in inside[0].parents:
            raise UserError(f"{self.output}: the output must be a dataset apart from the input {self.input}")
        source = open_dataset(source_path)
        check_dtype(source_path, source.dtype, self.kind)
        _check_offset(source_path, source.offset, source.voxel_size * self.factor, f"{self.factor}x")
        return source

    def open_target(self) -> Volume:
        return open_dataset(self.output, mode="r+", require_complete=False)

    def layout(self) -> BlockLayout:
        source = self.open_source()
        return self._layout(source.shape, source.voxel_size, source.offset)

    def create_outputs(self, layout: BlockLayout) -> None:
        source = self.open_source()
        create_dataset(
            DatasetPath.parse(self.output),
            shape=layout.total_write_roi.shape / layout.voxel_size,
            voxel_size=layout.voxel_size,
            offset=layout.total_write_roi.offset,
            dtype=source.dtype,
            chunk_shape=(self.chunk,) * 3,
            attrs={
                "kind": self.kind,
                "source": {"dataset": self.input, "downsample": {"factor": self.factor, "kind": self.kind}},
            },
        )


# --- pyramids ---------------------------------------------------------------------------------------------------
def level_run_path(path: DatasetPath, level: int) -> DatasetPath:
    """The bookkeeping group of the run that writes level `s{level}` (its progress is in `.incasem_run/` inside)."""
    return DatasetPath(path.container, f"{path.name}/{PYRAMID_RUNS}/s{level}")


def level_shape(shape, level: int) -> tuple[int, ...]:
    for _ in range(level):
        shape = output_shape(shape, 2)
    return tuple(shape)


def listed_levels(path: DatasetPath) -> int:
    """How many levels s0, s1, ... the group's multiscales metadata lists, each 2x coarser than the last."""
    attrs: dict[str, Any] = zarr.open_group(path.group_path, mode="r").attrs.asdict()
    try:
        datasets = attrs["ome"]["multiscales"][0]["datasets"]
        scales = [next(t["scale"] for t in d["coordinateTransformations"] if t["type"] == "scale") for d in datasets]
    except (KeyError, IndexError, StopIteration, TypeError):
        return 0
    count = 0
    while (
        count < len(datasets)
        and datasets[count]["path"] == f"s{count}"
        and all(abs(s - s0 * 2**count) < 1e-6 for s, s0 in zip(scales[count], scales[0]))
    ):
        count += 1
    return count


def open_level(path: DatasetPath, level: int, mode: str = "r") -> Volume:
    """Level `s{level}` of a complete dataset in world units (voxel size 2**level times s0's, s0's offset)."""
    if level == 0:
        return open_dataset(path, mode=mode)
    base = open_dataset(path)
    array_path = path.group_path / f"s{level}"
    if not array_path.exists():
        raise UserError(f"{path}: has no pyramid level s{level}; run incasem-like pyramid {path} --levels {level}")
    return Volume(zarr.open_array(array_path, mode=mode), base.voxel_size * 2**level, base.offset, f"{path}/s{level}")


class PyramidLevelStage(_DownsampleBlocks):
    """Level `s{level}` of `dataset`'s pyramid from level `s{level - 1}` (2x); `block`/`chunk` in level voxels."""

    dataset: str
    level: int

    @property
    def task_name(self) -> str:  # type: ignore[override]  # per level: the progress bar and the logs name it
        return f"pyramid_s{self.level}"

    @field_validator("level")
    @classmethod
    def _positive_level(cls, level: int) -> int:
        if level < 1:
            raise ValueError(f"level {level} must be at least 1 (s0 is the dataset itself)")
        return level

    @property
    def path(self) -> DatasetPath:
        return DatasetPath.parse(self.dataset)

    def output_paths(self) -> list[DatasetPath]:
        return [level_run_path(self.path, self.level)]

    def _base(self) -> Volume:
        base = open_dataset(self.path)
        check_dtype(self.path, base.dtype, self.kind)
        _check_offset(self.path, base.offset, base.voxel_size * 2**self.level, f"level s{self.level}")
        return base

    def layout(self) -> BlockLayout:
        base = self._base()
        return self._layout(
            level_shape(base.shape, self.level - 1), base.voxel_size * 2 ** (self.level - 1), base.offset
        )

    def create_outputs(self, layout: BlockLayout) -> None:
        base = self._base()
        if listed_levels(self.path) < self.level:
            raise UserError(f"{self.path}: level s{self.level - 1} is not complete; build the pyramid level by level")
        run_group = zarr.open_group(self.path.container, mode="a").require_group(self.output_paths()[0].name)
        run_group.attrs[META_KEY] = {"complete": False, "level": self.level, "kind": self.kind}
        create_level(
            self.path, self.level, layout.total_write_roi.shape / layout.voxel_size, base.dtype, (self.chunk,) * 3
        )

    def open_source(self) -> Volume:
        return open_level(self.path, self.level - 1)

    def open_target(self) -> Volume:
        return open_level(self.path, self.level, mode="r+")


def level_arrays(path: DatasetPath) -> list[int]:
    """The levels k >= 1 that have an array `s{k}` in the group (listed or not)."""
    return sorted(
        int(match[1])
        for p in path.group_path.iterdir()
        if (match := re.fullmatch(r"s(\d+)", p.name)) and match[1] != "0"
    )


def plan_pyramid(path: DatasetPath, levels: int, kind: str, block: int, chunk: int) -> list[PyramidLevelStage]:
    """The stages for levels s1..s{levels}, validated (writes nothing)."""
    base = open_dataset(path)
    if levels > 1 and all(s == 1 for s in level_shape(base.shape, levels - 1)):
        raise UserError(f"--levels {levels}: level s{levels - 1} of {path} is already a single voxel; ask for fewer")
    stages = [
        PyramidLevelStage(dataset=str(path), level=level, kind=kind, block=block, chunk=chunk)
        for level in range(1, levels + 1)
    ]
    for stage in stages:
        stage.layout()
    return stages


def build_pyramid(
    path: DatasetPath,
    levels: int,
    kind: str,
    block: int = DEFAULT_BLOCK,
    chunk: int = DEFAULT_CHUNK,
    workers: int = 1,
    overwrite: bool = False,
    progress: bool = True,
    on_level: Callable[[PyramidLevelStage, dict], None] | None = None,
    launcher: Launcher | None = None,
) -> list[int]:
    """Write levels s1..s{levels} of `path` (those not already complete, or all with `overwrite`) and list each in
    the multiscales metadata once complete. Returns the levels it wrote (empty if there was nothing to do)."""
    stages = plan_pyramid(path, levels, kind, block, chunk)
    for stage in stages:
        refuse_if_running(stage.output_paths()[0], str(path))
    if overwrite:
        set_levels(path, 1)  # first unlist: from here on the old levels no longer look complete
        for level in level_arrays(path):
            shutil.rmtree(path.group_path / f"s{level}")
        shutil.rmtree(path.group_path / PYRAMID_RUNS, ignore_errors=True)
        todo = stages
    else:
        todo = [stage for stage in stages if stage.level >= listed_levels(path)]
        for stage in todo:
            _check_resumable(path, stage)
    for stage in todo:
        summary = run_stage(stage, workers=workers, launcher=launcher, progress=progress)
        set_levels(path, stage.level + 1)
        if on_level:
            on_level(stage, summary)
    return [stage.level for stage in todo]


def _check_resumable(path: DatasetPath, stage: PyramidLevelStage) -> None:
    """A level not yet listed may be resumed only if this tool started it with the same parameters."""
    run_path, array_path = stage.output_paths()[0], path.group_path / f"s{stage.level}"
    if run_path.exists() and not array_path.exists():
        remove_dataset(run_path)  # bookkeeping of a level whose array was never created: nothing to keep
    elif array_path.exists() and not run_path.exists():
        raise UserError(
            f"{path}: s{stage.level} exists but is not a complete level written by this tool; "
            "pass --overwrite to recompute the pyramid"
        )
    elif run_path.exists() and dataset_meta(run_path).get("fingerprint") != fingerprint(stage, stage.layout()):
        raise UserError(
            f"{path}: level s{stage.level} was started with other parameters (--block, --chunk, --image/--labels); "
            "rerun that command to finish it, or pass --overwrite to recompute the pyramid"
        )
