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
a `PyramidLevelStage`, whose output is that array (`LevelOutput`): its bookkeeping (fingerprint, complete) sits under
`levels` in the group's attributes and the runner's progress in `<dataset>/.incasem_run/s{k}/`, beside the
dataset's own s0 run state. Being inside the dataset group, both go away with the dataset when s0 is rewritten.
The group's OME multiscales metadata lists a level only once its run is complete, so an interrupted pyramid never
looks complete to neuroglancer.
"""

import re
from collections.abc import Callable
from typing import Annotated, Any, Literal

import numpy as np
import zarr
from daisy import Block
from pydantic import Field, field_validator

from incasem_like.blockwise.launchers import Launcher
from incasem_like.blockwise.outputs import DatasetOutput, LevelOutput, StageOutput
from incasem_like.blockwise.runner import check_writable, refuse_if_running, run_stage
from incasem_like.blockwise.stage import BlockLayout, BlockwiseStage, check_block
from incasem_like.core.bounds import Voxels
from incasem_like.core.errors import UserError
from incasem_like.core.geometry import Coordinate, Roi, nm_text, per_axis
from incasem_like.ops.downsample import downsample, output_shape
from incasem_like.store.datasets import (
    DEFAULT_CHUNK,
    DatasetPath,
    Volume,
    create_dataset,
    create_level,
    dataset_meta,
    open_array,
    open_dataset,
    set_levels,
)

Kind = Literal["image", "labels", "mask"]
KINDS = ("image", "labels", "mask")
IMAGE_DTYPES = ("uint8", "uint16", "float32")
#: a factor along every axis; one axis's factor (1: that axis is kept)
Factor = Annotated[int, Field(ge=2, le=1024)]
AxisFactor = Annotated[int, Field(ge=1, le=1024)]
#: output block edge in voxels: a factor-2 block reads 256^3 input voxels
DEFAULT_BLOCK = 128


# --- the pure per-block functions ----------------------------------------------------------------------------
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
            f"{path}: offset {nm_text(offset)} is not a multiple of the {what} voxel size {nm_text(voxel_size)}, "
            "so the coarser grid cannot keep the offset; downsample a dataset whose offset is on that grid"
        )


class _DownsampleBlocks(BlockwiseStage):
    """Shared part: blocks on the output grid, each reading the same world ROI from the source."""

    kind: Kind
    block: Voxels = DEFAULT_BLOCK
    chunk: Voxels = DEFAULT_CHUNK

    @property
    def scale_factor(self) -> Coordinate:
        """The (z, y, x) factors."""
        return Coordinate(2, 2, 2)

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
            result = downsample(source[write.intersect(source.roi)], tuple(self.scale_factor), self.kind)
            assert Coordinate(result.shape) * target.voxel_size == write.shape, (result.shape, write)
            target[write] = result

        return process


class DownsampleStage(_DownsampleBlocks):
    """IN -> OUT, a new dataset `factor` times coarser along each axis (or per axis: (z, y, x) factors, e.g.
    (1, 2, 2) for anisotropic sections); `block`/`chunk` in output voxels."""

    task_name = "downsample"

    input: str
    output: str
    factor: Factor | tuple[AxisFactor, AxisFactor, AxisFactor] = 2

    @property
    def scale_factor(self) -> Coordinate:
        return Coordinate(per_axis(self.factor))

    @field_validator("factor")
    @classmethod
    def _coarser(cls, factor: int | tuple[int, int, int]) -> int | tuple[int, int, int]:
        if max(per_axis(factor)) < 2:
            raise ValueError("must make the data coarser: a factor of at least 2 along some axis")
        return factor

    def factor_text(self) -> str:
        return "x".join(map(str, per_axis(self.factor))) if isinstance(self.factor, tuple) else f"{self.factor}x"

    def outputs(self) -> list[StageOutput]:
        return [DatasetOutput.parse(self.output)]

    def open_source(self) -> Volume:
        source_path = DatasetPath.parse(self.input)
        source = open_dataset(source_path)
        check_dtype(source_path, source.dtype, self.kind)
        _check_offset(source_path, source.offset, source.voxel_size * self.scale_factor, self.factor_text())
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
    return Volume(open_array(array_path, mode=mode), base.voxel_size * 2**level, base.offset, f"{path}/s{level}")


class PyramidLevelStage(_DownsampleBlocks):
    """Level `s{level}` of `dataset`'s pyramid from level `s{level - 1}` (2x); `block`/`chunk` in level voxels."""

    dataset: str
    level: Annotated[int, Field(ge=1, le=64)]

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

    def outputs(self) -> list[StageOutput]:
        return [LevelOutput(self.path, self.level)]

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
    """Write levels s1..s{levels} of `path` (those not already listed, or all with `overwrite`) and list each in
    the multiscales metadata once complete; a level started by the same command resumes. Returns the levels it
    wrote (empty if there was nothing to do)."""
    stages = plan_pyramid(path, levels, kind, block, chunk)
    for stage in stages:
        refuse_if_running(stage.outputs()[0], str(path))
    if overwrite:
        set_levels(path, 1)  # first unlist: from here on the old levels no longer look complete
        for level in level_arrays(path):
            LevelOutput(path, level).remove()
        todo = stages
    else:
        todo = [stage for stage in stages if stage.level >= listed_levels(path)]
        for stage in todo:
            check_writable(stage)  # nothing is written if a later level would be refused
    for stage in todo:
        summary = run_stage(stage, workers=workers, launcher=launcher, progress=progress)
        set_levels(path, stage.level + 1)
        if on_level:
            on_level(stage, summary)
    return [stage.level for stage in todo]
