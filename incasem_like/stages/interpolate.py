"""Stage `labels_interpolate`: labels annotated on some slices only -> dense binary labels and where they are sure.

`annotated` lists the annotated slices along `axis` (voxel indices from the dataset's first voxel; given as
START:STOP:STEP or a comma list). Between two consecutive annotated slices, `incasem_like.ops.interpolation` fills
the gap from the raw image (`method` "random-walker") or by shape interpolation alone ("shape"). Two uint8 datasets
come out on the labels' grid:

- `output`: 0/1 labels; the annotated slices are copied (foreground = labels > 0);
- `sure` (default: OUTPUT_sure): 1 where the labels are sure, 0 where they are not (near the walker's 0.5, or the
  shape's band where the walker did not converge) and before the first and after the last annotated slice, where
  the labels are 0. It follows the metric-mask convention (1 = counts), so training takes it as a cell's
  `metric_mask` and ignores the unsure voxels.

Blocks are slabs along `axis` (`block` slices, the whole extent of the other two axes) that read `context` up to
the annotated slices around them; each gap is solved whole from its own two annotated slices, so the result does
not depend on the block size or the number of workers (a gap that two blocks share is solved by both, the same).
"""

from collections.abc import Callable
from typing import Annotated, Literal

import numpy as np
from daisy import Block
from pydantic import Field, field_validator, model_validator

from incasem_like.blockwise.outputs import DatasetOutput, StageOutput
from incasem_like.blockwise.stage import BlockLayout, BlockwiseStage, check_block
from incasem_like.blockwise.volume_stage import DEFAULT_BLOCK
from incasem_like.core.bounds import VoxelOffset, Voxels, slice_indices
from incasem_like.core.errors import FieldError, UserError
from incasem_like.core.geometry import Coordinate, nm_text
from incasem_like.ops.interpolation import Method, interpolate_gap
from incasem_like.stages.labels import LABEL_DTYPES
from incasem_like.store.datasets import DEFAULT_CHUNK, DatasetPath, Volume, create_dataset, open_dataset

AXES = ("z", "y", "x")
#: raw image dtypes the walker reads
RAW_DTYPES = ("uint8", "uint16", "int8", "int16", "float32")


class InterpolateLabelsStage(BlockwiseStage):
    """Sparse labels (`input`, integer) and their image (`raw`) -> dense 0/1 labels (`output`) and `sure`."""

    task_name = "labels_interpolate"

    input: str
    raw: str
    output: str
    sure: str | None = None
    annotated: tuple[VoxelOffset, ...]
    axis: Literal["z", "y", "x"] = "z"
    method: Method = "random-walker"
    beta: Annotated[float, Field(gt=0, le=1e6)] = 40.0
    sigma: Annotated[float, Field(ge=0, le=100)] = 1.0
    band: Annotated[float, Field(ge=0, le=1e4)] = 3.0
    growth: Annotated[float, Field(ge=0, le=100)] = 0.5
    margin: Annotated[float, Field(ge=0, le=0.5)] = 0.35
    block: Voxels = DEFAULT_BLOCK
    chunk: Voxels = DEFAULT_CHUNK

    @field_validator("annotated", mode="before")
    @classmethod
    def _parse(cls, value):
        try:
            return slice_indices(value)
        except (TypeError, ValueError) as error:
            raise FieldError(f"{{annotated}} {error}") from None

    @model_validator(mode="after")
    def _own_sure_dataset(self) -> "InterpolateLabelsStage":
        if self.sure_output.rstrip("/") == self.output.rstrip("/"):
            raise FieldError(f"{{sure}} {self.sure}: the sure mask needs a dataset of its own, not {{output}}'s")
        return self

    @property
    def sure_output(self) -> str:
        return self.sure or self.output.rstrip("/") + "_sure"

    @property
    def gaps(self) -> list[tuple[int, int]]:
        """Consecutive annotated slices (a, b) with slices between them."""
        return [(a, b) for a, b in zip(self.annotated, self.annotated[1:]) if b - a > 1]

    def outputs(self) -> list[StageOutput]:
        return [DatasetOutput.parse(self.output), DatasetOutput.parse(self.sure_output)]

    def open_inputs(self) -> tuple[Volume, Volume]:
        """The labels and the raw image, checked against each other and the annotated slices."""
        labels, raw = open_dataset(self.input), open_dataset(self.raw)
        if labels.dtype.name not in LABEL_DTYPES:
            raise UserError(
                f"{self.input}: dtype {labels.dtype} is not integer labels (needs {', '.join(LABEL_DTYPES)}); "
                "give the annotation (convert --labels), not probabilities"
            )
        if raw.dtype.name not in RAW_DTYPES:
            raise UserError(
                f"{self.raw}: dtype {raw.dtype} is not a raw image dtype ({', '.join(RAW_DTYPES)}); "
                "rescale it first (incasem-like rescale)"
            )
        if (labels.shape, labels.voxel_size, labels.offset) != (raw.shape, raw.voxel_size, raw.offset):
            raise UserError(
                f"{self.input}: shape {labels.shape}, voxel size {nm_text(labels.voxel_size)}, offset "
                f"{nm_text(labels.offset)} differs from {self.raw}'s {raw.shape}, {nm_text(raw.voxel_size)}, "
                f"{nm_text(raw.offset)}; give labels and raw on one voxel grid (crop or downsample one of them)"
            )
        length = labels.shape[AXES.index(self.axis)]
        if self.annotated[-1] >= length:
            raise FieldError(
                f"{{annotated}}: slice {self.annotated[-1]} lies beyond {self.input}, which has {length} slices along "
                f"{{axis}} {self.axis} (0..{length - 1}); give slices inside it"
            )
        return labels, raw

    def layout(self) -> BlockLayout:
        check_block(self.block, self.chunk)
        labels, _ = self.open_inputs()
        along = AXES.index(self.axis)
        reach = max((b - a for a, b in self.gaps), default=0)
        shape = Coordinate(self.block if axis == along else extent for axis, extent in enumerate(labels.shape))
        return BlockLayout(
            total_write_roi=labels.roi,
            block_write_shape=shape * labels.voxel_size,
            context=Coordinate(reach if axis == along else 0 for axis in range(3)) * labels.voxel_size,
            voxel_size=labels.voxel_size,
            output_chunk_shape=Coordinate((self.chunk,) * 3) * labels.voxel_size,
        )

    def create_outputs(self, layout: BlockLayout) -> None:
        source = {"dataset": self.input, "raw": self.raw, self.task_name: self.model_dump()}
        for path, kind in ((self.output, "labels"), (self.sure_output, "mask")):
            create_dataset(
                DatasetPath.parse(path),
                shape=layout.total_write_roi.shape / layout.voxel_size,
                voxel_size=layout.voxel_size,
                offset=layout.total_write_roi.offset,
                dtype=np.uint8,
                chunk_shape=(self.chunk,) * 3,
                attrs={"kind": kind, "source": source},
            )

    def block_processor(self) -> Callable[[Block], None]:
        labels, raw = self.open_inputs()
        output = open_dataset(self.output, mode="r+", require_complete=False)
        sure = open_dataset(self.sure_output, mode="r+", require_complete=False)
        along = AXES.index(self.axis)
        in_plane = [size for axis, size in enumerate(labels.voxel_size) if axis != along]
        unit = min(in_plane)
        parameters = {
            "method": self.method,
            "beta": self.beta,
            "sigma": self.sigma,
            "band": self.band,
            "growth": self.growth,
            "margin": self.margin,
            "sampling": (in_plane[0] / unit, in_plane[1] / unit),
            "spacing": labels.voxel_size[along] / unit,
        }

        plane = tuple(extent for axis, extent in enumerate(labels.shape) if axis != along)

        def along_axis(begin: int, end: int) -> tuple[slice, ...]:
            return tuple(slice(begin, end) if axis == along else slice(None) for axis in range(3))

        def slab(volume: Volume, begin: int, end: int) -> np.ndarray:
            """Slices begin..end-1 along the axis, that axis first."""
            return np.moveaxis(volume.read(along_axis(begin, end)), along, 0)

        def process(block: Block) -> None:
            write = block.write_roi.intersect(labels.roi)
            begin = ((write.begin - labels.offset) / labels.voxel_size)[along]
            end = ((write.end - labels.offset) / labels.voxel_size)[along]
            result = np.zeros((end - begin, *plane), np.uint8)
            certain = np.zeros_like(result)
            for index in self.annotated:
                if begin <= index < end:
                    result[index - begin] = slab(labels, index, index + 1)[0] > 0
                    certain[index - begin] = 1
            for a, b in self.gaps:
                low, high = max(a + 1, begin), min(b, end)
                if low >= high:
                    continue
                first, last = slab(labels, a, a + 1)[0] > 0, slab(labels, b, b + 1)[0] > 0
                gap_labels, gap_sure = interpolate_gap(slab(raw, a, b + 1), first, last, **parameters)
                result[low - begin : high - begin] = gap_labels[low - a - 1 : high - a - 1]
                certain[low - begin : high - begin] = gap_sure[low - a - 1 : high - a - 1]
            output.data[along_axis(begin, end)] = np.moveaxis(result, 0, along)
            sure.data[along_axis(begin, end)] = np.moveaxis(certain, 0, along)

        return process
