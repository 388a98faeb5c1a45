"""Stage `rescale`: float32 or wide-integer images (tomograms: SXT absorption, cryo-ET densities) -> uint8/uint16,
for the stages and models that need integer input (CLAHE, the bundled models).

The rule is explicit, reproducible and recorded: the `percentiles` (default 0.5 and 99.5) of the whole input (or
of its ROI) map to 0 and to the top of the output dtype, linearly, clipped (`incasem_like.ops.intensity`). The
percentiles are computed before any block is written, from a histogram accumulated over chunk-deep slabs; the
resulting `low`/`high` are recorded in the output's provenance, so every block, worker and resumed run uses the same
values, and `predict` can tell data rescaled by another rule from the model's training data. `value_range` gives
`low`/`high` directly instead (e.g. to rescale a second tomogram exactly as the first).
"""

from collections.abc import Callable
from typing import Literal

import numpy as np
from daisy import Block
from pydantic import PrivateAttr, model_validator

from incasem_like.blockwise.volume_stage import VolumeStage, requested_roi
from incasem_like.core.errors import FieldError, UserError
from incasem_like.ops.intensity import rescale
from incasem_like.store.datasets import DatasetPath, dataset_meta
from incasem_like.store.intensity import Intensity, Percent, intensity_percentiles


class RescaleStage(VolumeStage):
    """Any image dtype -> uint8 or uint16: `percentiles` (or `value_range`) -> 0 .. top, linear, clipped."""

    task_name = "rescale"
    input_dtypes = ("uint8", "uint16", "int8", "int16", "float32")

    dtype: Literal["uint8", "uint16"] = "uint8"
    percentiles: tuple[Percent, Percent] = (0.5, 99.5)
    value_range: tuple[Intensity, Intensity] | None = None

    _range: tuple[float, float] | None = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _low_below_high(self) -> "RescaleStage":
        if self.percentiles[0] >= self.percentiles[1]:
            raise FieldError("{percentiles}: LOW must be below HIGH")
        if self.value_range is not None and self.value_range[0] >= self.value_range[1]:
            raise FieldError("{value_range}: LOW must be below HIGH")
        return self

    def context_voxels(self) -> int:
        return 0

    def output_dtype(self, input_dtype: np.dtype) -> np.dtype:
        return np.dtype(self.dtype)

    def provenance(self) -> dict:
        """The fields and the `low`/`high` they give on this input."""
        source = self.open_input()
        low, high = self.value_range or intensity_percentiles(
            source, requested_roi(source, self.input, self.roi_offset, self.roi_shape), self.percentiles
        )
        if low >= high:
            raise UserError(
                f"{self.input}: percentiles {self.percentiles} of the data are both {low}: the image is flat there; "
                "give the value range to map with --range LOW HIGH"
            )
        return {**self.model_dump(), "low": low, "high": high, "input_dtype": source.dtype.name}

    def block_processor(self) -> Callable[[Block], None]:
        recorded = dataset_meta(DatasetPath.parse(self.output))["source"][self.task_name]
        self._range = (recorded["low"], recorded["high"])
        return super().block_processor()

    def compute(self, data: np.ndarray) -> np.ndarray:
        assert self._range is not None, "the recorded range is read by block_processor"
        return rescale(data, *self._range, np.dtype(self.dtype))
