"""Stage `threshold`: a stored probability map (uint8, 0..255 = 0..1) -> binary segmentation (uint8 0/1),
optionally cleaned up: objects with fewer than N voxels removed, then holes with fewer than M voxels filled.

`predict` writes its segmentation with the same rule (and runs this stage when it cleans up), so re-thresholding at
the prediction's threshold reproduces it exactly and other thresholds need no second prediction. The clean-up is
that of `labels clean` (face connectivity; see `incasem_like.ops.morphology` for why components longer than
`max_span` voxels are never small), so the blockwise result equals the whole volume's.
"""

from typing import Annotated

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from incasem_like.blockwise.volume_stage import VolumeStage
from incasem_like.core.bounds import STRICT, VoxelCount, Voxels
from incasem_like.core.errors import UserError
from incasem_like.ops.morphology import DEFAULT_MAX_SPAN, blockwise_context, clean_components, segment
from incasem_like.store.datasets import DatasetPath, Volume, dataset_meta

#: foreground: probability above it
Threshold = Annotated[float, Field(ge=0, lt=1)]


class CleanUp(BaseModel):
    """Post-processing of a segmentation: remove objects, then fill holes, smaller than these voxel counts."""

    model_config = ConfigDict(**STRICT, frozen=True)

    min_object_voxels: VoxelCount = 0
    min_hole_voxels: VoxelCount = 0
    max_span: Voxels = DEFAULT_MAX_SPAN

    def steps(self) -> list[tuple[str, int]]:
        return [("objects", self.min_object_voxels), ("holes", self.min_hole_voxels)]

    def active(self) -> bool:
        return self.min_object_voxels > 1 or self.min_hole_voxels > 1

    def context_voxels(self) -> int:
        return blockwise_context(self.steps(), self.max_span)

    def apply(self, segmentation: np.ndarray) -> np.ndarray:
        """uint8 0/1 -> uint8 0/1 cleaned up (outside the array counts as background)."""
        return clean_components(segmentation > 0, self.steps(), self.max_span).astype(np.uint8)


class ThresholdStage(VolumeStage):
    """uint8 probabilities -> uint8 0/1 segmentation at `threshold`, cleaned up by `clean_up`."""

    task_name = "threshold"
    input_dtypes = ("uint8",)
    output_kind = "labels"

    threshold: Threshold = 0.5
    clean_up: CleanUp = CleanUp()

    def open_input(self) -> Volume:
        source = super().open_input()
        kind = dataset_meta(DatasetPath.parse(self.input)).get("kind", "probabilities")
        if kind != "probabilities":
            raise UserError(f"{self.input} holds {kind}, not probabilities; threshold a predict run's probabilities")
        return source

    def context_voxels(self) -> int:
        return self.clean_up.context_voxels()

    def output_dtype(self, input_dtype: np.dtype) -> np.dtype:
        return np.dtype(np.uint8)

    def compute(self, data: np.ndarray) -> np.ndarray:
        segmentation = segment(data, self.threshold)
        return self.clean_up.apply(segmentation) if self.clean_up.active() else segmentation
