"""Dense prediction of a region with a trained U-Net: context from the data (mirrored beyond it), output tiles.

The network is translation-equivariant for shifts by its total downsampling factor, so tiles placed on that grid
agree with one large pass (up to float rounding): tiles step by the largest multiple of the factor within the
output size (a later tile overwrites the few voxels it shares with the one before) and the data is mirrored
beyond the region where the last tile reaches out.
"""

import itertools
from contextlib import nullcontext

import numpy as np
import torch

from incasem_like.datasets import Volume
from incasem_like.geometry import Coordinate, Roi
from incasem_like.model import UNet3D


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


def normalize(raw: np.ndarray) -> np.ndarray:
    """uint raw -> float32 in [-1, 1], as the network saw it in training."""
    return (raw.astype(np.float32) / np.iinfo(raw.dtype).max) * 2 - 1


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
    return output_edge // factor * factor


def predict_region(
    model: UNet3D,
    raw: np.ndarray,
    input_shape: tuple[int, int, int],
    device: torch.device,
    bf16: bool = False,
    quantize: bool = False,
) -> np.ndarray:
    """Network output for the centre of `raw` (float32, normalized), which carries the network's context on each
    side: float32 logits, or with `quantize` uint8 probabilities round(255 * sigmoid) (computed on the device).

    Passes of `input_shape` (a valid input of the model) start every `pass_step` voxels from the region's corner,
    so output voxel v comes from pass v // step whatever region it is computed in, as long as the region starts
    on the same grid. Where the last pass reaches past `raw`, `raw` is mirrored.
    """
    output_shape = model.config.output_shape(input_shape)
    context = [(i - o) // 2 for i, o in zip(input_shape, output_shape)]
    region = [r - 2 * c for r, c in zip(raw.shape, context)]
    factor = 2**model.config.downsamplings
    starts = [tile_starts(r, o, pass_step(o, factor)) for r, o in zip(region, output_shape)]
    covered = [s[-1] + o for s, o in zip(starts, output_shape)]
    if covered != region:
        raw = np.pad(raw, [(0, c - r) for c, r in zip(covered, region)], mode="reflect")
    result = np.empty(covered, dtype=np.uint8 if quantize else np.float32)
    channels_last = bf16 and device.type == "cuda"
    model.eval()
    with torch.no_grad(), autocast(device, bf16):
        for start in itertools.product(*starts):
            tile = torch.from_numpy(
                np.ascontiguousarray(raw[tuple(slice(s, s + i) for s, i in zip(start, input_shape))])
            )
            tensor = tile[None, None].to(device, non_blocking=True)
            if channels_last:
                tensor = tensor.contiguous(memory_format=torch.channels_last_3d)
            logits = model(tensor).float()
            output = torch.sigmoid(logits).mul_(255).round_().to(torch.uint8) if quantize else logits
            result[tuple(slice(s, s + o) for s, o in zip(start, output_shape))] = output.cpu().numpy()[0, 0]
    return result[tuple(slice(0, r) for r in region)]


def probabilities(logits: np.ndarray) -> np.ndarray:
    return (1 / (1 + np.exp(-logits))).astype(np.float32)
