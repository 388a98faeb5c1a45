"""Stage `mask`: the coarse cell mask (ASEM preprocessing step 3) of a raw dataset, blockwise with the context that
makes it equal to one call on the whole volume (`incasem_like.ops.morphology.cell_mask`, whose docstring says why).
"""

from typing import Annotated

import numpy as np
from pydantic import Field, model_validator

from incasem_like.blockwise.volume_stage import VolumeStage
from incasem_like.core.bounds import Radius, VoxelCount, Voxels
from incasem_like.core.errors import FieldError
from incasem_like.ops.morphology import DEFAULT_MAX_SPAN, cell_mask, cell_mask_context

#: a raw intensity (uint8 or uint16)
Gray16 = Annotated[int, Field(ge=0, le=65535)]


class MaskStage(VolumeStage):
    """Raw (uint8/uint16) -> coarse cell mask (uint8 0/1), blockwise with `cell_mask_context` voxels of context."""

    task_name = "mask"
    input_dtypes = ("uint8", "uint16")
    output_kind = "mask"

    #: intensity window counted as cell (MIN, MAX), inclusive
    gray: tuple[Gray16, Gray16] = (2, 180)
    #: a ball, or (z, y, x) radii for anisotropic voxels (e.g. 0 3 3: within sections)
    opening_radius: Radius | tuple[Radius, Radius, Radius] = 3
    closing_radius: Radius | tuple[Radius, Radius, Radius] = 2
    min_hole_voxels: VoxelCount = 100000
    min_object_voxels: VoxelCount = 100000
    max_span: Voxels = DEFAULT_MAX_SPAN

    @model_validator(mode="after")
    def _check(self) -> "MaskStage":
        gray = f"{{gray}} {self.gray[0]} {self.gray[1]}"
        if self.gray[0] < 1:
            raise FieldError(
                f"{gray}: MIN must be at least 1 (voxels outside the dataset read as 0, which is not cell)"
            )
        if self.gray[0] > self.gray[1]:
            raise FieldError(f"{gray}: MIN is above MAX, so nothing would be cell")
        return self

    def context_voxels(self) -> int:
        return cell_mask_context(
            self.opening_radius, self.closing_radius, self.min_hole_voxels, self.min_object_voxels, self.max_span
        )

    def open_input(self):
        source = super().open_input()
        top = np.iinfo(source.dtype).max
        if self.gray[1] > top:
            raise FieldError(f"{{gray}} {self.gray[0]} {self.gray[1]}: {self.input} is {source.dtype} (at most {top})")
        return source

    def output_dtype(self, input_dtype: np.dtype) -> np.dtype:
        return np.dtype(np.uint8)

    def compute(self, data: np.ndarray) -> np.ndarray:
        return cell_mask(
            data,
            gray_min=self.gray[0],
            gray_max=self.gray[1],
            opening_radius=self.opening_radius,
            closing_radius=self.closing_radius,
            min_hole_voxels=self.min_hole_voxels,
            min_object_voxels=self.min_object_voxels,
            max_span=self.max_span,
        )
