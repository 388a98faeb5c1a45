"""How raw values become the network's input in [-1, 1]: the rule a model is trained with (recorded in its
checkpoint) and the range it gives on one volume (recorded with each prediction).

Rules (`NormalizationRule.mode`):

- `bit_depth` (unsigned raw: EM images, CLAHE output): 0 -> -1 and 2^bits - 1 -> 1, with the bit depth the
  converter recorded or detected (`store.datasets.value_max`: 12-bit data in uint16 is not read as nearly black).
- `percentiles` (float or signed raw: SXT absorption, cryo-ET densities, whose scale differs between
  acquisitions): the volume's own `percentiles`, over the whole dataset, -> -1 and 1, values beyond clipped.
- `value_range`: the fixed values `value_range` -> -1 and 1, clipped (calibrated data).

Both clip unless `clip` is false (bioimage.io's `scale_range` does not clip: `nn.packages` runs such packages).

A model trained on one tomogram normalizes the next by the same rule; the range the rule gives on a volume is
computed once, before any block, so every block, worker and resumed run of a prediction uses the same one.

>>> normalize(np.array([0, 51, 255], np.uint8))
array([-1. , -0.6,  1. ], dtype=float32)
>>> normalize(np.array([-3.0, 0.0, 1.0], np.float32), IntensityRange(-2.0, 2.0, clip=True))
array([-1. ,  0. ,  0.5], dtype=float32)

Arrays and tensors (on any device: `predict` normalizes on the GPU) go through the same float32 arithmetic:

>>> normalize(torch.tensor([0, 51, 255], dtype=torch.uint8), IntensityRange(0.0, 255.0, clip=False))
tensor([-1.0000, -0.6000,  1.0000])
"""

from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from typing import Literal, TypeVar

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, model_validator
from pydantic.functional_serializers import model_serializer

from incasem_like.core.errors import UserError
from incasem_like.store.datasets import Volume, value_max
from incasem_like.store.intensity import Intensity, Percent, intensity_percentiles

Mode = Literal["bit_depth", "percentiles", "value_range"]
Values = TypeVar("Values", np.ndarray, torch.Tensor)


@dataclass(frozen=True)
class IntensityRange:
    """`low` -> 0 and `high` -> 1 (the network sees 2 v - 1), values beyond clipped if `clip`."""

    low: float
    high: float
    clip: bool

    def unit(self, raw: Values) -> Values:
        """`raw` -> float32 (an array or a tensor, as given), `low` -> 0, `high` -> 1 (float32 arithmetic, the same
        in every block)."""
        if isinstance(raw, np.ndarray):
            return self.unit(torch.from_numpy(raw.astype(np.float32))).numpy()
        scaled = raw.to(torch.float32, copy=True)
        if self.low:  # (subtracting 0 changes nothing: bit-depth ranges start at 0)
            scaled = scaled.sub_(float(np.float32(self.low)))
        scaled = scaled.div_(float(np.float32(self.high - self.low)))
        return scaled.clamp_(0, 1) if self.clip else scaled

    def record(self) -> dict:
        return asdict(self)


def normalize(raw: Values, intensity: IntensityRange | None = None) -> Values:
    """`raw` (an array or a tensor) -> the network's input in [-1, 1] by `intensity` (default: an unsigned numpy
    dtype's whole range), as the network saw it in training."""
    intensity = intensity or IntensityRange(0.0, float(np.iinfo(raw.dtype).max), clip=False)  # type: ignore[call-overload]
    unit = intensity.unit(raw)
    return unit * 2 - 1 if isinstance(unit, np.ndarray) else unit.mul_(2).sub_(1)


class NormalizationRule(BaseModel):
    """How a model's raw input is normalized (see the module's docstring)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    mode: Mode
    percentiles: tuple[Percent, Percent] = (0.5, 99.5)
    value_range: tuple[Intensity, Intensity] | None = None
    #: percentiles and value_range: values beyond the range clipped (recorded only where false)
    clip: bool = True

    @model_serializer(mode="wrap")
    def _clip_only_where_false(self, handler) -> dict:
        return {key: value for key, value in handler(self).items() if key != "clip" or not value}

    @model_validator(mode="after")
    def _consistent(self) -> "NormalizationRule":
        if self.percentiles[0] >= self.percentiles[1]:
            raise ValueError(f"percentiles {list(self.percentiles)}: the first must be below the second")
        if (self.value_range is None) != (self.mode != "value_range"):
            raise ValueError("value_range [LOW, HIGH] is given with mode value_range, and only then")
        if self.value_range is not None and self.value_range[0] >= self.value_range[1]:
            raise ValueError(f"value_range {list(self.value_range)}: LOW must be below HIGH")
        return self

    def accepts(self, dtype: np.dtype) -> bool:
        """Whether raw of `dtype` can be normalized by this rule (bit depths are of unsigned integers)."""
        return dtype.kind == "u" if self.mode == "bit_depth" else dtype.kind in "uif"

    def range_of(self, volume: Volume) -> IntensityRange:
        """The range this rule gives on `volume` (percentiles: of the whole dataset, read once)."""
        return self._range(
            lambda: float(value_max(volume)),
            lambda: intensity_percentiles(volume, volume.roi, self.percentiles),
            lambda: volume.name,
        )

    def range_of_array(self, data: np.ndarray, name: str) -> IntensityRange:
        """The range this rule gives on `data` in memory (bit depth: of its dtype)."""
        return self._range(
            lambda: float(np.iinfo(data.dtype).max),
            lambda: (float(np.percentile(data, self.percentiles[0])), float(np.percentile(data, self.percentiles[1]))),
            lambda: name,
        )

    def _range(
        self, top: Callable[[], float], percentiles: Callable[[], tuple[float, float]], name: Callable[[], str]
    ) -> IntensityRange:
        """The range from the data's largest value `top` or its `percentiles` (each read only where needed)."""
        if self.mode == "bit_depth":
            return IntensityRange(0.0, top(), clip=False)
        if self.mode == "value_range":
            assert self.value_range is not None
            return IntensityRange(*self.value_range, clip=self.clip)
        low, high = percentiles()
        if low >= high:
            raise UserError(
                f"{name()}: percentiles {list(self.percentiles)} of the data are both {low}: the image is flat; "
                "normalize by a fixed value_range instead"
            )
        return IntensityRange(low, high, clip=self.clip)

    def text(self) -> str:
        if self.mode == "bit_depth":
            return "normalization by bit depth (unsigned raw)"
        unclipped = "" if self.clip else ", unclipped"
        if self.mode == "percentiles":
            return (
                f"normalization by each volume's percentiles {self.percentiles[0]:g} and {self.percentiles[1]:g}"
                f"{unclipped}"
            )
        assert self.value_range is not None
        return f"normalization by the values {self.value_range[0]:g} .. {self.value_range[1]:g}{unclipped}"


def default_rule(dtypes: Iterable[np.dtype]) -> NormalizationRule:
    """Bit depth where all raw `dtypes` are unsigned, else percentiles 0.5 and 99.5 of each volume."""
    return NormalizationRule(mode="bit_depth" if all(dtype.kind == "u" for dtype in dtypes) else "percentiles")


def checkpoint_rule(state: dict) -> NormalizationRule:
    """The rule a checkpoint records (bit depth for checkpoints from before rules were recorded)."""
    return NormalizationRule.model_validate(state.get("raw_normalization") or {"mode": "bit_depth"})
