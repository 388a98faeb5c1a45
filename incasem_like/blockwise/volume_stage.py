"""The common shape of preprocessing stages: one input dataset -> one output dataset on the same voxel grid.

A subclass says how much context a block needs, which input dtypes it accepts, the output dtype and a pure
function from the block's data (write region + context, zero outside the dataset) to its result; this class
does the rest (validation, optional ROI, chunk-aligned blocks, creating the output, reading and writing).
"""

from collections.abc import Callable
from typing import ClassVar

import numpy as np
from daisy import Block

from incasem_like.blockwise.outputs import DatasetOutput, StageOutput
from incasem_like.blockwise.stage import BlockLayout, BlockwiseStage, check_block
from incasem_like.core.bounds import Edges, VoxelOffsets, Voxels
from incasem_like.core.errors import FieldError, UserError
from incasem_like.core.geometry import Coordinate, Roi, roi_from_voxels
from incasem_like.store.datasets import DEFAULT_CHUNK, DatasetPath, Volume, create_dataset, open_dataset

DEFAULT_BLOCK = 256


def requested_roi(
    source: Volume, name: str, offset: tuple[int, int, int] | None, shape: tuple[int, int, int] | None
) -> Roi:
    """The world ROI of `roi_offset`, `roi_shape` (voxels of `source`, the dataset `name`), or all of it without."""
    if (offset is None) != (shape is None):
        raise FieldError("{roi_offset} and {roi_shape} go together (6 numbers: z y x z y x, in voxels)")
    if offset is None or shape is None:
        return source.roi
    roi = roi_from_voxels(offset, shape, source.voxel_size, origin=source.offset)
    if roi.empty or not source.roi.contains(roi):
        raise FieldError(
            f"{{roi}} offset {offset} shape {shape} (voxels) lies outside {name} of shape {source.shape}; "
            "choose a region inside it"
        )
    return roi


class VolumeStage(BlockwiseStage):
    """Input dataset -> output dataset, blockwise with context; `roi_offset`/`roi_shape` in voxels of the input."""

    #: input dtypes the stage accepts (names), or empty for any
    input_dtypes: ClassVar[tuple[str, ...]] = ()
    #: `kind` recorded in the output's bookkeeping ("image", "mask", "labels")
    output_kind: ClassVar[str] = "image"

    input: str
    output: str
    block: Voxels = DEFAULT_BLOCK
    chunk: Voxels = DEFAULT_CHUNK
    roi_offset: VoxelOffsets | None = None
    roi_shape: Edges | None = None

    # --- what subclasses define ---------------------------------------------------------------------------
    def context_voxels(self) -> int:
        """Voxels of input needed on each side of a block for its result to be exact."""
        raise NotImplementedError

    def output_dtype(self, input_dtype: np.dtype) -> np.dtype:
        raise NotImplementedError

    def compute(self, data: np.ndarray) -> np.ndarray:
        """Pure per-block function: the block's input (context included) -> result of the same shape."""
        raise NotImplementedError

    def provenance(self) -> dict:
        """What the output records of this stage (under `source.<task name>`): its fields."""
        return self.model_dump()

    # --- the rest is shared -------------------------------------------------------------------------------
    def outputs(self) -> list[StageOutput]:
        return [DatasetOutput.parse(self.output)]

    def open_input(self) -> Volume:
        source = open_dataset(self.input)
        if self.input_dtypes and source.dtype.name not in self.input_dtypes:
            raise UserError(
                f"{self.input}: dtype {source.dtype} is not supported by {self.task_name} "
                f"(needs {' or '.join(self.input_dtypes)}); convert the data first"
            )
        return source

    def layout(self) -> BlockLayout:
        check_block(self.block, self.chunk)
        source = self.open_input()
        voxel_size = source.voxel_size
        return BlockLayout(
            total_write_roi=requested_roi(source, self.input, self.roi_offset, self.roi_shape),
            block_write_shape=Coordinate((self.block,) * 3) * voxel_size,
            context=Coordinate((self.context_voxels(),) * 3) * voxel_size,
            voxel_size=voxel_size,
            output_chunk_shape=Coordinate((self.chunk,) * 3) * voxel_size,
        )

    def create_outputs(self, layout: BlockLayout) -> None:
        source = self.open_input()
        roi = layout.total_write_roi
        create_dataset(
            DatasetPath.parse(self.output),
            shape=roi.shape / layout.voxel_size,
            voxel_size=layout.voxel_size,
            offset=roi.offset,
            dtype=self.output_dtype(source.dtype),
            chunk_shape=(self.chunk,) * 3,
            attrs={"kind": self.output_kind, "source": {"dataset": self.input, self.task_name: self.provenance()}},
        )

    def block_processor(self) -> Callable[[Block], None]:
        source = open_dataset(self.input)
        output = open_dataset(self.output, mode="r+", require_complete=False)

        def process(block: Block) -> None:
            write = block.write_roi.intersect(output.roi)
            result = self.compute(source.to_ndarray(block.read_roi, fill_value=0))
            inner = (write - block.read_roi.offset) / source.voxel_size
            output[write] = result[tuple(slice(b, e) for b, e in zip(inner.begin, inner.end))]

        return process
