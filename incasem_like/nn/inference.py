"""Dense prediction of a region with a trained U-Net: context from the data (mirrored beyond it), output tiles,
optional test-time augmentation.

The network is translation-equivariant for shifts by its total downsampling factor, so tiles placed on that grid
agree with one large pass (up to float rounding): tiles step by the largest multiple of the factor within the
output size (a later tile overwrites the few voxels it shares with the one before) and the data is mirrored
beyond the region where the last tile reaches out.

Test-time augmentation runs each tile in mirrored (and x-y transposed) variants, undoes the transform on each
output and averages the probabilities in a fixed order, so a tile's result depends on its input alone.
"""

import itertools
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from incasem_like.core.errors import UserError
from incasem_like.core.geometry import Coordinate, Roi
from incasem_like.nn.model import NetworkConfig, UNet3D
from incasem_like.store.datasets import Volume

#: input voxels per forward when variants are batched (several variants of a small tile share one forward)
MAX_BATCH_INPUT_VOXELS = 2**24


def select_device(name: str, option: str = "--device") -> Literal["cpu", "cuda"]:
    """`auto` -> `cuda` where torch sees a GPU, else `cpu`; `cuda` without one is a `UserError` naming `option`."""
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError(f"{option} cuda: torch sees no CUDA GPU; use {option} cpu (or auto)")
    return "cuda" if name == "cuda" or (name == "auto" and torch.cuda.is_available()) else "cpu"


def raw_with_context(raw: Volume, roi: Roi, context: Coordinate) -> np.ndarray:
    """Raw voxels of `roi` grown by `context` voxels per side; beyond the data the volume is mirrored."""
    grown = roi.grow(context * raw.voxel_size, context * raw.voxel_size)
    inside = grown.intersect(raw.roi)
    data = raw[inside]
    before = (inside.begin - grown.begin) / raw.voxel_size
    after = (grown.end - inside.end) / raw.voxel_size
    if any(before) or any(after):
        data = np.pad(data, list(zip(before, after)), mode="reflect")
    return data


def tile_starts(length: int, tile: int, step: int) -> list[int]:
    """Starts of `tile`-long tiles, `step` apart, until one reaches `length` (the last may reach beyond it)."""
    starts = [0]
    while starts[-1] + tile < length:
        starts.append(starts[-1] + step)
    return starts


def autocast(device: torch.device, enabled: bool):
    """bf16 autocast where asked for, on the device's type."""
    return torch.autocast(device.type, dtype=torch.bfloat16) if enabled else nullcontext()


def pass_step(output_edge: int, factor: int) -> int:
    """How far consecutive passes move: the largest multiple of the downsampling factor within the output."""
    if output_edge < factor:
        raise ValueError(f"a pass's output edge {output_edge} is below the downsampling factor {factor}: enlarge it")
    return output_edge // factor * factor


@dataclass(frozen=True)
class Variant:
    """One test-time augmentation: mirror the spatial axes in `flips` (0 = z), then swap y and x if `transpose`."""

    flips: tuple[int, ...] = ()
    transpose: bool = False

    def apply(self, tensor: torch.Tensor) -> torch.Tensor:
        """(N, C, z, y, x) -> the variant's view of it."""
        if self.flips:
            tensor = torch.flip(tensor, [2 + axis for axis in self.flips])
        return tensor.transpose(-1, -2) if self.transpose else tensor

    def undo(self, tensor: torch.Tensor) -> torch.Tensor:
        """The inverse of `apply`: a network output back in the input's orientation."""
        if self.transpose:
            tensor = tensor.transpose(-1, -2)
        return torch.flip(tensor, [2 + axis for axis in self.flips]) if self.flips else tensor


NO_TTA = (Variant(),)
TtaMode = Literal["none", "mirror", "mirror+transpose"]


def tta_variants(network: NetworkConfig, mode: TtaMode, transposable: bool) -> tuple[Variant, ...]:
    """The distinct variants of `mode`: every combination of mirrors along the axes the network looks along
    (8 for a 3D network, 4 for a slice-wise 2D one, whose z mirror would repeat the identity), and with
    `mirror+transpose` each again with y and x swapped where `transposable` (equal y and x voxel sizes and pass
    edges, and a network symmetric in y and x)."""
    if mode == "none":
        return NO_TTA
    axes = [axis for axis in range(3) if network.sees_axis(axis)]
    flips = [combo for count in range(len(axes) + 1) for combo in itertools.combinations(axes, count)]
    transposes = (
        (False, True) if mode == "mirror+transpose" and transposable and _symmetric_in_yx(network) else (False,)
    )
    return tuple(Variant(flip, transpose) for transpose in transposes for flip in flips)


def _symmetric_in_yx(network: NetworkConfig) -> bool:
    shapes = [*network.kernels(), *network.factors(), network.final_kernel(), network.first_kernel()]
    return all(shape[1] == shape[2] for shape in shapes)


def predict_region(
    model: UNet3D,
    raw: np.ndarray,
    input_shape: tuple[int, int, int],
    device: torch.device,
    bf16: bool = False,
    output: Literal["logits", "probabilities", "quantized"] = "logits",
    variants: tuple[Variant, ...] = NO_TTA,
) -> np.ndarray:
    """Network output for the centre of `raw` (float32, normalized), which carries the network's context on each
    side: float32 logits (no variants only), float32 probabilities averaged over `variants`, or `quantized`
    uint8 round(255 * probability) (computed on the device).

    Passes of `input_shape` (a valid input of the model) start every `pass_step` voxels from the region's corner,
    so output voxel v comes from pass v // step whatever region it is computed in, as long as the region starts
    on the same grid. Where the last pass reaches past `raw`, `raw` is mirrored. `model` runs as it is (in eval
    mode): pass `inference_model(...)` of a model with batch norm to fold it into the convolutions.
    """
    if output == "logits" and len(variants) > 1:
        raise ValueError("logits of several variants are not averaged; ask for probabilities")
    output_shape = model.config.output_shape(input_shape)
    context = [(i - o) // 2 for i, o in zip(input_shape, output_shape)]
    region = [r - 2 * c for r, c in zip(raw.shape, context)]
    factors = model.config.total_factor()
    starts = [tile_starts(r, o, pass_step(o, f)) for r, o, f in zip(region, output_shape, factors)]
    covered = [s[-1] + o for s, o in zip(starts, output_shape)]
    if covered != region:
        raw = np.pad(raw, [(0, c - r) for c, r in zip(covered, region)], mode="reflect")
    result = np.empty(covered, dtype=np.uint8 if output == "quantized" else np.float32)
    memory_format = torch.channels_last_3d
    per_forward = max(1, MAX_BATCH_INPUT_VOXELS // int(np.prod(input_shape)))
    was_training = model.training
    model.eval()
    with torch.no_grad(), autocast(device, bf16):
        for start in itertools.product(*starts):
            tile = torch.from_numpy(
                np.ascontiguousarray(raw[tuple(slice(s, s + i) for s, i in zip(start, input_shape))])
            )[None, None].to(device, non_blocking=True)
            if output == "logits":
                values = model(tile.contiguous(memory_format=memory_format)).float()
            else:
                values = _averaged_probabilities(model, tile, variants, per_forward, memory_format)
                if output == "quantized":
                    values = values.mul_(255).round_().to(torch.uint8)
            result[tuple(slice(s, s + o) for s, o in zip(start, output_shape))] = values.cpu().numpy()[0, 0]
    model.train(was_training)
    return result[tuple(slice(0, r) for r in region)]


def _averaged_probabilities(model, tile, variants, per_forward, memory_format) -> torch.Tensor:
    """The mean over `variants` of the network's probabilities for `tile`, summed in the variants' order."""
    total: torch.Tensor | None = None
    for first in range(0, len(variants), per_forward):
        group = variants[first : first + per_forward]
        batch = torch.cat([variant.apply(tile) for variant in group]).contiguous(memory_format=memory_format)
        outputs = torch.sigmoid(model(batch).float())
        for index, variant in enumerate(group):
            probability = variant.undo(outputs[index : index + 1])
            total = probability.clone() if total is None else total.add_(probability)
    assert total is not None  # there is at least the identity
    return total.div_(len(variants)) if len(variants) > 1 else total


def probabilities(logits: np.ndarray) -> np.ndarray:
    return (1 / (1 + np.exp(-logits))).astype(np.float32)
