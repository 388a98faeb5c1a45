"""The training/fine-tuning configuration (YAML), validated with pydantic; every error names its key and the fix.

Paths are relative to the working directory, as for every other command. ROIs are in voxels relative to the
first voxel of the raw dataset (as `--roi` elsewhere); `null` means the whole dataset.
"""

import math
from pathlib import Path
from typing import Annotated, Literal

import numpy as np
from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator

from incasem_like.core.bounds import STRICT, Count, Edges, Minutes, Seed, SliceIndices, VoxelOffsets, Voxels
from incasem_like.core.config_files import read_yaml_mapping
from incasem_like.core.errors import UserError, describe_validation_error
from incasem_like.core.geometry import Coordinate, Roi, nm_text, roi_from_voxels
from incasem_like.nn.model import NetworkConfig
from incasem_like.nn.normalization import NormalizationRule, default_rule
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


class ImageData(_Section):
    """A region of a raw dataset without labels (the unlabelled data of semi-supervised training)."""

    container: str
    raw: str = "volumes/raw_clahe"
    roi: VoxelRoi | None = None

    def path(self, dataset: str) -> DatasetPath:
        return DatasetPath(Path(self.container), dataset)

    def datasets(self) -> dict[str, str]:
        """Role -> dataset name of the datasets this region uses."""
        return {"raw": self.raw}

    def sparse(self) -> bool:
        return False


class CellData(_Section):
    """One annotated region of a cell: datasets inside one zarr container and the ROI that is used."""

    container: str
    raw: str = "volumes/raw_clahe"
    labels: str
    mask: str | None = Field(None, description="cell mask (1 = inside); voxels outside do not count")
    metric_mask: str | None = Field(None, description="1 = counts; the exclusion zone (0) does not count")
    roi: VoxelRoi | None = None
    annotated: str | None = Field(
        None, description="sparse annotation: mask of the annotated voxels (1 = annotated); the others do not count"
    )
    annotated_slices: SliceIndices | None = Field(
        None,
        description="sparse annotation: only these slices of the labels are annotated (START:STOP:STEP, a comma list "
        "or a list; voxels from the raw dataset's first, along annotated_axis)",
    )
    annotated_axis: Literal["z", "y", "x"] = "z"
    unannotated_label: int | None = Field(
        None, ge=1, le=2**63 - 1, description="sparse annotation: the label value of unannotated voxels (e.g. 255)"
    )

    def path(self, dataset: str) -> DatasetPath:
        return DatasetPath(Path(self.container), dataset)

    def datasets(self) -> dict[str, str]:
        """Role -> dataset name of the datasets this cell uses."""
        roles = {
            "raw": self.raw,
            "labels": self.labels,
            "mask": self.mask,
            "metric_mask": self.metric_mask,
            "annotated": self.annotated,
        }
        return {role: name for role, name in roles.items() if name}

    def sparse(self) -> bool:
        """Whether only some voxels of the labels are annotated."""
        return self.annotated is not None or self.annotated_slices is not None or self.unannotated_label is not None


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


class SemiSupervised(_Section):
    """A reconstruction decoder on the network's bottleneck (`nn.model.ReconstructionDecoder`), trained on the
    unlabelled regions beside the segmentation (Dyhr et al.); prediction and export never see it."""

    unlabelled: list[ImageData] = Field(min_length=1, description="raw regions without labels")
    weight: float = Field(1.0, gt=0, le=1000, description="the reconstruction loss's weight (Huber)")
    schedule: Literal["alternate", "joint"] = Field(
        "alternate",
        description="alternate: even iterations train segmentation and reconstruction on labelled data, odd ones "
        "reconstruction alone on unlabelled data (Dyhr et al.'s protocol); joint: both every iteration",
    )


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
    semi_supervised: SemiSupervised | None = None
    raw_normalization: NormalizationRule | None = Field(
        None,
        description="how raw values become the network's input, recorded in the checkpoint and applied alike by "
        "predict: mode bit_depth (unsigned raw), percentiles (each volume's own, default [0.5, 99.5]: float "
        "tomograms) or value_range [LOW, HIGH]; default bit_depth where all raw is unsigned, else percentiles",
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


#: the roles of a cell's integer datasets (labels and masks)
MASKS = ("labels", "mask", "metric_mask", "annotated")


class CellVolumes:
    """The opened datasets of one `CellData` entry and its ROI in world units, checked for consistency."""

    def __init__(self, cell: CellData | ImageData, key: str):
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
        for role in MASKS:
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
        self._check_annotated_slices()

    def _check_annotated_slices(self) -> None:
        cell = self.cell
        if not isinstance(cell, CellData) or cell.annotated_slices is None:
            return
        slices = cell.annotated_slices
        axis = "zyx".index(cell.annotated_axis)
        raw = self.volumes["raw"]
        if slices[-1] >= raw.shape[axis]:
            raise UserError(
                f"{self.key}.annotated_slices: slice {slices[-1]} lies beyond the {raw.shape[axis]} slices of "
                f"{self.cell.path(self.cell.raw)} along {cell.annotated_axis}; list slices of the data"
            )
        first = (self.roi.begin[axis] - raw.offset[axis]) // raw.voxel_size[axis]
        inside = [s for s in slices if first <= s < first + self.roi.shape[axis] // raw.voxel_size[axis]]
        if not inside:
            raise UserError(
                f"{self.key}.annotated_slices: none of them lies in the cell's ROI (slices {first}.."
                f"{first + self.roi.shape[axis] // raw.voxel_size[axis] - 1} along {cell.annotated_axis}); "
                "list the annotated slices or widen the roi"
            )

    def _annotated_roi(self) -> Roi:
        roi = self.volumes["raw"].roi
        for role in MASKS:
            if role in self.volumes:
                roi = roi.intersect(self.volumes[role].roi)
        if roi.empty:
            raise UserError(f"{self.key}: the labels do not overlap the raw data; check the datasets' offsets")
        return roi

    @property
    def voxel_size(self) -> Coordinate:
        return self.volumes["raw"].voxel_size

    def annotation(self, roi: Roi, labels: np.ndarray, annotated: np.ndarray | None) -> np.ndarray:
        """Which voxels of `roi` (world units, on the raw grid) are annotated (bool), given the label values there
        and, for a cell with an `annotated` mask, the mask's values: the mask's ones, without `unannotated_label`,
        on `annotated_slices`."""
        cell = self.cell
        assert isinstance(cell, CellData), "only labelled regions are annotated"
        result = np.ones(labels.shape, bool) if annotated is None else annotated > 0
        if cell.unannotated_label is not None:
            result &= labels != cell.unannotated_label
        if cell.annotated_slices is not None:
            axis = "zyx".index(cell.annotated_axis)
            raw = self.volumes["raw"]
            first = (roi.begin[axis] - raw.offset[axis]) // raw.voxel_size[axis]
            on_slices = np.isin(np.arange(first, first + labels.shape[axis]), cell.annotated_slices)
            result &= on_slices.reshape([-1 if a == axis else 1 for a in range(3)])
        return result


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


def open_unlabelled(config: TrainConfig, reference: CellVolumes) -> list[CellVolumes]:
    """Open and check semi-supervised training's unlabelled regions: the voxel size and raw dtype of `reference`
    (training[0]), and at least one network input in each."""
    if config.semi_supervised is None:
        return []
    regions = []
    for index, region in enumerate(config.semi_supervised.unlabelled):
        cell = CellVolumes(region, f"semi_supervised.unlabelled[{index}]")
        raw, expected = cell.volumes["raw"], reference.volumes["raw"]
        if cell.voxel_size != reference.voxel_size:
            raise UserError(
                f"{cell.key}.raw: voxel size {nm_text(cell.voxel_size)} of {region.path(region.raw)} differs from "
                f"training[0]'s {nm_text(reference.voxel_size)}; downsample it to match"
            )
        if raw.dtype != expected.dtype:
            raise UserError(
                f"{cell.key}.raw: dtype {raw.dtype} of {region.path(region.raw)} differs from training[0]'s "
                f"{expected.dtype}; convert or rescale it like the labelled data"
            )
        shape = cell.roi.shape / cell.voxel_size
        if any(edge < needed for edge, needed in zip(shape, config.network.input_shape)):
            raise UserError(
                f"{cell.key}.roi: shape {list(shape)} (voxels) is smaller than the network input "
                f"{list(config.network.input_shape)}; choose a larger region"
            )
        regions.append(cell)
    return regions


def normalization_rule(config: TrainConfig, cells: list[CellVolumes]) -> NormalizationRule:
    """The configured normalization, else `default_rule` of the cells' raw dtypes; every cell's raw must fit it."""
    rule = config.raw_normalization or default_rule([cell.volumes["raw"].dtype for cell in cells])
    for cell in cells:
        raw = cell.volumes["raw"]
        if not rule.accepts(raw.dtype):
            raise UserError(
                f"{cell.key}.raw: dtype {raw.dtype} of {cell.cell.path(cell.cell.raw)} does not fit "
                f"raw_normalization mode {rule.mode} (unsigned raw only); use raw_normalization mode percentiles or "
                "value_range, or map the data with incasem-like rescale first"
            )
    return rule
