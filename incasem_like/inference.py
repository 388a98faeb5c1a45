"""Dense prediction of a region with a trained U-Net: context from the data (mirrored beyond it), output tiles.

The network is translation-equivariant for shifts by its total downsampling factor, so tiles placed on that grid
agree with one large pass: tiles step by the largest multiple of the factor within the output size (overlaps are
written twice with identical values) and the data is mirrored beyond the region where the last tile reaches out.
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


def predict_logits(
    model: UNet3D, raw: np.ndarray, input_shape: tuple[int, int, int], device: torch.device, bf16: bool = False
) -> np.ndarray:
    """Logits for the centre of `raw` (float32, normalized), which carries the network's context on each side.

    Tiles are network passes of `input_shape` (a valid input of the model).
    """
    output_shape = model.config.output_shape(input_shape)
    context = [(i - o) // 2 for i, o in zip(input_shape, output_shape)]
    region = [r - 2 * c for r, c in zip(raw.shape, context)]
    factor = 2**model.config.downsamplings
    starts = [tile_starts(r, o, o // factor * factor) for r, o in zip(region, output_shape)]
    covered = [s[-1] + o for s, o in zip(starts, output_shape)]
    if covered != region:
        raw = np.pad(raw, [(0, c - r) for c, r in zip(covered, region)], mode="reflect")
    logits = np.empty(covered, dtype=np.float32)
    model.eval()
    with torch.no_grad(), autocast(device, bf16):
        for start in itertools.product(*starts):
            tile = raw[tuple(slice(s, s + i) for s, i in zip(start, input_shape))]
            tensor = torch.from_numpy(np.ascontiguousarray(tile))[None, None].to(device)
            result = model(tensor).float().cpu().numpy()[0, 0]
            logits[tuple(slice(s, s + o) for s, o in zip(start, output_shape))] = result
    return logits[tuple(slice(0, r) for r in region)]


def probabilities(logits: np.ndarray) -> np.ndarray:
    return (1 / (1 + np.exp(-logits))).astype(np.float32)
