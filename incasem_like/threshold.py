"""Stage `threshold`: a stored probability map (uint8, 0..255 = 0..1) -> binary segmentation (uint8 0/1).

`predict` writes its segmentation with the same rule, so re-thresholding at the prediction's threshold reproduces
it exactly and other thresholds need no second prediction.
"""

from typing import Annotated

import numpy as np
from pydantic import AfterValidator

from incasem_like.blockwise.volume_stage import VolumeStage
from incasem_like.datasets import DatasetPath, Volume, dataset_meta
from incasem_like.errors import UserError


def segment(probabilities: np.ndarray, threshold: float) -> np.ndarray:
    """uint8 probabilities q (q / 255 = p) -> uint8 1 where q / 255 > threshold, else 0."""
    return (probabilities > threshold * 255).astype(np.uint8)


def _check_threshold(value: float) -> float:
    if not 0 <= value < 1:
        raise ValueError(f"--threshold {value} must be in [0, 1): voxels with probability above it are foreground")
    return value


Threshold = Annotated[float, AfterValidator(_check_threshold)]


class ThresholdStage(VolumeStage):
    """uint8 probabilities -> uint8 0/1 segmentation at `threshold`."""

    task_name = "threshold"
    input_dtypes = ("uint8",)
    output_kind = "labels"

    threshold: Threshold = 0.5

    def open_input(self) -> Volume:
        source = super().open_input()
        kind = dataset_meta(DatasetPath.parse(self.input)).get("kind", "probabilities")
        if kind != "probabilities":
            raise UserError(f"{self.input} holds {kind}, not probabilities; threshold a predict run's probabilities")
        return source

    def context_voxels(self) -> int:
        return 0

    def output_dtype(self, input_dtype: np.dtype) -> np.dtype:
        return np.dtype(np.uint8)

    def compute(self, data: np.ndarray) -> np.ndarray:
        return segment(data, self.threshold)
