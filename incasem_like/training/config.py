"""The training/fine-tuning configuration (YAML), validated with pydantic; every error names its key and the fix.

Paths are relative to the working directory, as for every other command. ROIs are in voxels relative to the
first voxel of the raw dataset (as `--roi` elsewhere); `null` means the whole dataset.
"""

import math
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator

from incasem_like.core.bounds import STRICT, Count, Edges, Minutes, Seed, VoxelOffsets, Voxels
from incasem_like.core.config_files import read_yaml_mapping
from incasem_like.core.errors import UserError, describe_validation_error
from incasem_like.core.geometry import Coordinate, Roi, nm_text, roi_from_voxels
from incasem_like.nn.model import NetworkConfig
from incasem_like.store.datasets import DatasetPath, Volume, open_dataset


class _Section(BaseModel):
    model_config = STRICT


class VoxelRoi(_Section):
    offset: VoxelOffsets = (0, 0, 0)
    shape: Edges

    @field_validator("shape")
    @classmethod
    def _positive(cls, value: tuple[int, int, int]) -> tuple[int, int, int]:
        if min(value) < 1:
            raise ValueError(f"every edge of an ROI shape must be at least 1 voxel, got {list(value)}")
        return value


class CellData(_Section):
    """One annotated region of a cell: datasets inside one zarr container and the ROI that is used."""

    container: str
    raw: str = "volumes/raw_clahe"
    labels: str
    mask: str | None = Field(None, description="cell mask (1 = inside); voxels outside do not count")
    metric_mask: str | None = Field(None, description="1 = counts; the exclusion zone (0) does not count")
    roi: VoxelRoi | None = None

    def path(self, dataset: str) -> DatasetPath:
        return DatasetPath(Path(self.container), dataset)

    def datasets(self) -> dict[str, str]:
        """Role -> dataset name of the datasets this cell uses."""
        roles = {"raw": self.raw, "labels": self.labels, "mask": self.mask, "metric_mask": self.metric_mask}
        return {role: name for role, name in roles.items() if name}


class Sampling(_Section):
    max_outside_mask: float = Field(0.25, ge=0, le=1, description="reject blocks with more outside the cell mask")
    min_foreground: float = Field(0.05, ge=0, le=1, description="blocks with less foreground are rejected ...")
    reject_probability: float = Field(0.9, ge=0, le=1, description="... with this probability")
    max_attempts: Count = Field(10000, description="rejected locations in a row after which training stops")


#: an elastic jitter, voxels
Jitter = Annotated[float, Field(ge=0, le=1000)]
#: an intensity scale factor
Scale = Annotated[float, Field(ge=0, le=100)]
#: an intensity shift, in units of the whole range
Shift = Annotated[float, Field(ge=-100, le=100)]


class Elastic(_Section):
    """Control points every `control_point_spacing` voxels, jittered by `jitter_sigma` voxels (one value for all
    axes, or z, y, x: a slice-wise network wants no z jitter, e.g. spacing [1, 32, 32] and jitter [0, 2, 2])."""

    control_point_spacing: Voxels | Edges = 32
    jitter_sigma: Jitter | tuple[Jitter, Jitter, Jitter] = 2.0
    subsample: Annotated[int, Field(ge=1, le=64)] = 4
    rotate_xy: bool = True
    probability: float = Field(
        1.0, ge=0, le=1, description="share of samples deformed (the others keep their voxels uninterpolated)"
    )

    @field_validator("control_point_spacing")
    @classmethod
    def _positive_spacing(cls, value):
        if min(value if isinstance(value, tuple) else (value,)) < 1:
            raise ValueError("control points must be at least 1 voxel apart")
        return value

    @field_validator("jitter_sigma")
    @classmethod
    def _non_negative_jitter(cls, value):
        if min(value if isinstance(value, tuple) else (value,)) < 0:
            raise ValueError("a jitter cannot be negative")
        return value

    def spacing(self) -> tuple[int, int, int]:
        value = self.control_point_spacing
        return value if isinstance(value, tuple) else (value,) * 3

    def jitter(self) -> tuple[float, float, float]:
        value = self.jitter_sigma
        return value if isinstance(value, tuple) else (value,) * 3


class Intensity(_Section):
    scale: tuple[Scale, Scale] = (0.85, 1.15)
    shift: tuple[Shift, Shift] = (-0.15, 0.15)


class Noise(_Section):
    """Additive Gaussian noise, its standard deviation drawn per sample from [0, max_sigma] (intensities 0..1)."""

    max_sigma: float = Field(0.08, gt=0, le=1)
    probability: float = Field(0.5, ge=0, le=1, description="share of samples that get noise")


class Augmentation(_Section):
    mirror_transpose: bool = True
    elastic: Elastic | None = Elastic()
    intensity: Intensity | None = Intensity()
    noise: Noise | None = Field(None, description="Gaussian noise (not in the method; off by default)")


class Optimizer(_Section):
    learning_rate: float = Field(3e-5, gt=0, le=10)
    weight_decay: float = Field(3e-5, ge=0, le=10)
    schedule: Literal["constant", "cosine"] = Field(
        "constant", description="cosine: from learning_rate down to final_learning_rate at the last iteration"
    )
    final_learning_rate: float = Field(0.0, ge=0, le=10, description="the cosine schedule's rate at the last iteration")

    @model_validator(mode="after")
    def _final_below_start(self) -> "Optimizer":
        if self.schedule == "cosine" and self.final_learning_rate > self.learning_rate:
            raise ValueError(
                f"final_learning_rate {self.final_learning_rate} exceeds learning_rate {self.learning_rate}"
            )
        return self

    def learning_rate_at(self, iteration: int, iterations: int) -> float:
        """The rate of step `iteration` (1..iterations): a function of the iteration alone, so resuming is exact."""
        if self.schedule == "constant" or iterations <= 1:
            return self.learning_rate
        progress = (iteration - 1) / (iterations - 1)
        cosine = 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
        return self.final_learning_rate + (self.learning_rate - self.final_learning_rate) * cosine


class TrainConfig(_Section):
    """What `incasem-like train` and `finetune` read."""

    organelle: str
    run_dir: str
    network: NetworkConfig = NetworkConfig()
    training: list[CellData] = Field(min_length=1)
    validation: list[CellData] = []
    sampling: Sampling = Sampling()
    augmentation: Augmentation = Augmentation()
    loss: Literal["balanced_bce", "bce_dice"] = Field(
        "balanced_bce",
        description="balanced_bce: the method's class-balanced binary cross-entropy; bce_dice: binary cross-entropy "
        "plus soft Dice, both over the voxels that count",
    )
    max_class_ratio: float = Field(100.0, ge=1, le=10**9, description="class weights are clipped at 1:max_class_ratio")
    batch_size: int = Field(1, ge=1, le=4096, description="samples per iteration, each drawn and augmented on its own")
    optimizer: Optimizer = Optimizer()
    iterations: Count = 40000
    max_minutes: Minutes | None = Field(
        None,
        description="stop earlier, with a last checkpoint and validation, so the run ends within this wall time "
        "(e.g. a cluster job's limit); --resume continues it",
    )
    time_budget_minutes: Minutes | None = Field(
        None,
        description="the run's whole training time over all its invocations (--resume included): it stops, with a "
        "last checkpoint and validation, once this is spent",
    )
    batch_norm_calibration: int = Field(
        8,
        ge=0,
        le=10**6,
        description="with batch norm: before each checkpoint its statistics are recomputed with the current weights "
        "over this many batches of the training data without elastic and intensity augmentation (the running "
        "averages lag behind fast-changing weights and follow the smoothed, augmented images); 0 keeps the running "
        "averages",
    )
    checkpoint_every: Count = 1000
    validate_every: Count = 1000
    snapshot_every: Count = 1000
    data_workers: int = Field(
        4, ge=0, le=256, description="processes preparing batches ahead (0: in the training process)"
    )
    seed: Seed = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    threshold: float = Field(0.5, gt=0, lt=1, description="probability threshold for validation F1")
    validation_input_shape: Edges | None = Field(
        None, description="network input of validation passes: larger tiles waste less context (default: training's)"
    )

    @model_validator(mode="after")
    def _intervals(self) -> "TrainConfig":
        if self.validation and self.validate_every > self.iterations:
            raise ValueError(f"validate_every {self.validate_every} exceeds iterations {self.iterations}")
        return self


def load_config(path: str | Path, overrides: dict | None = None) -> TrainConfig:
    """Read and validate a YAML config; `overrides` (top-level keys) win over the file."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such config file; see configs/training/ for examples")
    content = read_yaml_mapping(path, "keys (organelle, run_dir, training, ...)")
    try:
        return TrainConfig.model_validate({**content, **(overrides or {})})
    except ValidationError as error:
        raise UserError(f"{path}: {describe_validation_error(error, TrainConfig)} (see configs/training/)") from None


class CellVolumes:
    """The opened datasets of one `CellData` entry and its ROI in world units, checked for consistency."""

    def __init__(self, cell: CellData, key: str):
        self.cell, self.key = cell, key
        self.volumes: dict[str, Volume] = {}
        for role, name in cell.datasets().items():
            try:
                self.volumes[role] = open_dataset(cell.path(name))
            except UserError as error:
                raise UserError(f"{key}.{role}: {error}") from None
        raw = self.volumes["raw"]
        for role, volume in self.volumes.items():
            if volume.voxel_size != raw.voxel_size:
                raise UserError(
                    f"{key}.{role}: voxel size {nm_text(volume.voxel_size)} of {cell.path(cell.datasets()[role])} "
                    f"differs from the raw data's {nm_text(raw.voxel_size)}; resample it to the raw grid"
                )
        if raw.dtype.kind != "u":
            raise UserError(
                f"{key}.raw: dtype {raw.dtype} of {cell.path(cell.raw)}; expected uint8 or uint16: map float or signed "
                "data with incasem-like rescale first (its rule is recorded with the model)"
            )
        for role in ("labels", "mask", "metric_mask"):
            if role in self.volumes and self.volumes[role].dtype.kind not in "iub":
                raise UserError(f"{key}.{role}: dtype {self.volumes[role].dtype} is not an integer label/mask type")
        if cell.roi is None:
            self.roi = self._annotated_roi()
        else:
            self.roi = roi_from_voxels(cell.roi.offset, cell.roi.shape, raw.voxel_size, origin=raw.offset)
            for role, volume in self.volumes.items():
                if role != "raw" and not volume.roi.contains(self.roi):
                    raise UserError(
                        f"{key}.roi: offset {list(cell.roi.offset)} shape {list(cell.roi.shape)} (voxels) reaches "
                        f"outside {role} {cell.path(cell.datasets()[role])} (ROI {volume.roi}); choose a region "
                        "inside it"
                    )
            if not raw.roi.contains(self.roi):
                raise UserError(
                    f"{key}.roi: offset {list(cell.roi.offset)} shape {list(cell.roi.shape)} (voxels) lies outside "
                    f"the raw data of shape {list(raw.shape)}; choose a region inside it"
                )

    def _annotated_roi(self) -> Roi:
        roi = self.volumes["raw"].roi
        for role in ("labels", "mask", "metric_mask"):
            if role in self.volumes:
                roi = roi.intersect(self.volumes[role].roi)
        if roi.empty:
            raise UserError(f"{self.key}: the labels do not overlap the raw data; check the datasets' offsets")
        return roi

    @property
    def voxel_size(self) -> Coordinate:
        return self.volumes["raw"].voxel_size


def open_cells(config: TrainConfig) -> tuple[list[CellVolumes], list[CellVolumes]]:
    """Open and check all training and validation cells; one voxel size for all of them."""
    training = [CellVolumes(cell, f"training[{i}]") for i, cell in enumerate(config.training)]
    validation = [CellVolumes(cell, f"validation[{i}]") for i, cell in enumerate(config.validation)]
    reference = training[0].voxel_size
    for cell in training + validation:
        if cell.voxel_size != reference:
            raise UserError(
                f"{cell.key}: voxel size {nm_text(cell.voxel_size)} differs from training[0]'s "
                f"{nm_text(reference)}; one model is trained at one voxel size (downsample to match)"
            )
    return training, validation
