"""Label preparation stages (ASEM preprocessing steps 5-7) and the per-organelle defaults in `configs/`.

- `labels_clean`: remove objects smaller than N voxels and/or fill holes smaller than M voxels;
- `labels_dilate`: bias correction, dilation by ball(N);
- `labels_metric_mask`: the exclusion zone dilation(labels, ball(d)) minus erosion(labels, ball(e)) that F1
  ignores, written as a mask where 1 = the voxel counts (is *not* in the zone).

All three work on the foreground `labels > 0` and write uint8 0/1: binary labels as `convert --labels` writes
them (0/1 uint8) keep their dtype; instance or class labels of any integer dtype become one 0/1 uint8
foreground. Outside the dataset the labels are 0, so objects touching the volume border are eroded there and
small objects at the border are removed. The result does not depend on the block size (see `incasem_like.ops.morphology`
for the connected-component rule, its `max_span` and the context it needs).

Defaults per organelle come from `configs/organelles/<name>.yaml` (see `organelle_config_dir`).
"""

import os
import sys
from importlib.resources import files
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, ValidationError

from incasem_like.blockwise.volume_stage import VolumeStage
from incasem_like.core.bounds import STRICT, Radius, VoxelCount, Voxels
from incasem_like.core.config_files import read_yaml_mapping
from incasem_like.core.errors import UserError, describe_validation_error
from incasem_like.core.geometry import per_axis
from incasem_like.ops.morphology import (
    DEFAULT_MAX_SPAN,
    blockwise_context,
    clean_labels,
    clean_steps,
    dilate_labels,
    metric_mask,
)

#: integer label dtypes the label stages read (floats are probabilities, not labels)
LABEL_DTYPES = ("uint8", "uint16", "uint32", "uint64", "int8", "int16", "int32", "int64")
#: set to a folder holding `organelles/*.yaml` to use other defaults
CONFIG_ENV = "INCASEM_LIKE_CONFIGS"


# --- per-organelle defaults ------------------------------------------------------------------------------------
class _Section(BaseModel):
    model_config = ConfigDict(**STRICT, frozen=True)


class CleanDefaults(_Section):
    min_object_voxels: VoxelCount
    min_hole_voxels: VoxelCount


class MetricMaskDefaults(_Section):
    dilation_voxels: Radius
    erosion_voxels: Radius


class OrganelleConfig(_Section):
    """One `configs/organelles/<organelle>.yaml`: the label preparation defaults of one organelle."""

    organelle: str
    clean: CleanDefaults
    dilate_voxels: Radius
    metric_mask: MetricMaskDefaults


def config_dir_candidates() -> list[Path]:
    """Where the organelle configs are looked for, in order: $INCASEM_LIKE_CONFIGS/organelles; the repository's
    configs/organelles beside the package (source checkout, editable install); a copy inside the package
    (incasem_like/configs/organelles); the installation's share/incasem-like/configs/organelles."""
    package = Path(str(files("incasem_like"))).resolve()
    candidates = [
        package.parent / "configs" / "organelles",
        package / "configs" / "organelles",
        Path(sys.prefix) / "share" / "incasem-like" / "configs" / "organelles",
    ]
    if os.environ.get(CONFIG_ENV):
        candidates.insert(0, Path(os.environ[CONFIG_ENV]) / "organelles")
    return candidates


def organelle_config_dir() -> Path:
    candidates = config_dir_candidates()
    if os.environ.get(CONFIG_ENV) and not candidates[0].is_dir():
        raise UserError(f"{CONFIG_ENV}={os.environ[CONFIG_ENV]}: no organelles/ folder in it")
    for candidate in candidates:
        if candidate.is_dir():
            return candidate
    raise UserError(
        f"no organelle configs found (looked in {', '.join(map(str, candidates))}); "
        f"set {CONFIG_ENV} to a folder with organelles/<name>.yaml"
    )


def known_organelles(config_dir: Path | None = None) -> list[str]:
    return sorted(path.stem for path in (config_dir or organelle_config_dir()).glob("*.yaml"))


def load_organelle(name: str, config_dir: Path | None = None) -> OrganelleConfig:
    """The validated defaults of organelle `name`; `UserError` (one line naming the file and key) otherwise."""
    config_dir = config_dir or organelle_config_dir()
    known = known_organelles(config_dir)
    if name not in known:
        raise UserError(f"unknown organelle {name!r}; known: {', '.join(known) or 'none'} (configs in {config_dir})")
    path = config_dir / f"{name}.yaml"
    content = read_yaml_mapping(path, "keys (organelle, clean, dilate_voxels, metric_mask)")
    try:
        config = OrganelleConfig.model_validate(content)
    except ValidationError as error:
        raise UserError(f"{path}: {describe_validation_error(error, OrganelleConfig)}") from None
    if config.organelle != name:
        raise UserError(f"{path}: organelle = {config.organelle!r} does not match the file name; write {name!r}")
    return config


# --- stages ----------------------------------------------------------------------------------------------------
class LabelsStage(VolumeStage):
    """Integer labels -> uint8 0/1; `organelle` only records where the defaults came from."""

    input_dtypes = LABEL_DTYPES
    output_kind = "labels"

    organelle: str | None = None

    def output_dtype(self, input_dtype: np.dtype) -> np.dtype:
        return np.dtype(np.uint8)


class CleanLabelsStage(LabelsStage):
    """Remove small objects, then fill small holes; exact blockwise with `blockwise_context` voxels of context
    (26 for mito's objects < 27, 64 for er's holes < 20000)."""

    task_name = "labels_clean"

    min_object_voxels: VoxelCount = 0
    min_hole_voxels: VoxelCount = 0
    max_span: Voxels = DEFAULT_MAX_SPAN

    def context_voxels(self) -> int:
        return blockwise_context(clean_steps(self.min_object_voxels, self.min_hole_voxels), self.max_span)

    def compute(self, data: np.ndarray) -> np.ndarray:
        return clean_labels(data, self.min_object_voxels, self.min_hole_voxels, self.max_span)


class DilateLabelsStage(LabelsStage):
    task_name = "labels_dilate"

    voxels: Radius = 0

    def context_voxels(self) -> int:
        return self.voxels

    def compute(self, data: np.ndarray) -> np.ndarray:
        return dilate_labels(data, self.voxels)


class MetricMaskStage(LabelsStage):
    task_name = "labels_metric_mask"
    output_kind = "mask"

    #: a ball, or (z, y, x) radii: e.g. (0, 2, 2) excludes a band within sections only, for anisotropic voxels
    dilation_voxels: Radius | tuple[Radius, Radius, Radius] = 0
    erosion_voxels: Radius | tuple[Radius, Radius, Radius] = 0

    def context_voxels(self) -> int:
        return max(*per_axis(self.dilation_voxels), *per_axis(self.erosion_voxels))

    def compute(self, data: np.ndarray) -> np.ndarray:
        return metric_mask(data, self.dilation_voxels, self.erosion_voxels)
