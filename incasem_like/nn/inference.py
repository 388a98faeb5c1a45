"""Dense prediction of a region with a trained U-Net: context from the data (mirrored beyond it), output tiles,
optional test-time augmentation.

The network is translation-equivariant for shifts by its total downsampling factor, so tiles placed on that grid
agree with one large pass (up to float rounding): tiles step by the largest multiple of the factor within the
output size (a later tile overwrites the few voxels it shares with the one before) and the data is mirrored
beyond the region where the last tile reaches out.

Test-time augmentation runs each tile in mirrored (and x-y transposed) variants, undoes the transform on each
output and averages the probabilities in a fixed order, so a tile's result depends on its input alone.
"""

import collections
import itertools
import math
from collections.abc import Iterable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from incasem_like.core.errors import UserError
from incasem_like.core.geometry import Coordinate, Roi
from incasem_like.nn.model import NetworkConfig, UNet3D
from incasem_like.store.datasets import Volume

#: input voxels per forward on a CPU when variants are batched (several variants of a small tile share one forward)
MAX_BATCH_INPUT_VOXELS = 2**24
#: input voxels per forward on a GPU (about 3 passes of the method's network at 222^3, 8 GiB of activations in bf16)
GPU_BATCH_INPUT_VOXELS = 2**25


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


def default_batch(device: str, variants: int, input_shape: tuple[int, ...]) -> int:
    """Passes (or variants of passes) per forward: on a GPU as many as fit `GPU_BATCH_INPUT_VOXELS` (at least
    one); on a CPU a pass's variants, up to `MAX_BATCH_INPUT_VOXELS` (a larger batch runs no faster there)."""
    voxels = math.prod(input_shape)
    if device == "cuda":
        return max(1, GPU_BATCH_INPUT_VOXELS // voxels)
    return max(1, min(variants, MAX_BATCH_INPUT_VOXELS // voxels))


class Predictor:
    """A model run over regions in forwards of exactly `batch` passes (the last one filled up with repeats):
    a forward's shape never depends on the region, so a pass's output does not depend on which passes share its
    batch, and results are bit-identical for a given device, precision and `batch`, whatever the blocks.

    Each region (on the device, normalized, carrying the network's context on each side) is covered by passes of
    `input_shape` starting every `pass_step` voxels from its corner, and must be covered exactly (see
    `covered_shape`). With several `variants` each pass runs in each of them; their probabilities are undone
    and summed in the variants' order, then averaged. Passes of consecutive regions fill the same batches.
    """

    def __init__(
        self,
        model: UNet3D,
        input_shape: tuple[int, int, int],
        device: torch.device,
        bf16: bool = False,
        variants: tuple[Variant, ...] = NO_TTA,
        batch: int = 1,
    ):
        self.model, self.input_shape, self.device, self.bf16 = model, tuple(input_shape), device, bf16
        self.variants, self.batch = variants, batch
        self.output_shape = model.config.output_shape(input_shape)
        self.context = tuple((i - o) // 2 for i, o in zip(input_shape, self.output_shape))
        self.steps = [pass_step(o, f) for o, f in zip(self.output_shape, model.config.total_factor())]

    def covered_shape(self, region: tuple[int, ...]) -> tuple[int, ...]:
        """The output shape the passes that cover `region` (output voxels) compute: at least `region`."""
        return tuple(tile_starts(r, o, s)[-1] + o for r, o, s in zip(region, self.output_shape, self.steps))

    def outputs(
        self, regions: Iterable[torch.Tensor], kind: Literal["logits", "probabilities"] = "probabilities"
    ) -> Iterator[torch.Tensor]:
        """For each region (z, y, x), in order and as soon as its last pass has run: float32 logits (no variants
        only) or probabilities of its centre, on the device. `regions` is consumed lazily (it may read ahead)."""
        if kind == "logits" and len(self.variants) > 1:
            raise ValueError("logits of several variants are not averaged; ask for probabilities")
        pending: collections.deque[_Region] = collections.deque()
        queued: list[tuple[_Region, tuple[int, ...], Variant]] = []
        was_training = self.model.training
        self.model.eval()
        try:
            for raw in regions:
                region = _Region(raw, self, kind)
                pending.append(region)
                for start in region.starts:
                    for variant in self.variants:
                        queued.append((region, start, variant))
                        if len(queued) == self.batch:
                            self._forward(queued)
                            queued = []
                while pending and pending[0].remaining == 0:
                    yield pending.popleft().result
            if queued:
                self._forward(queued)
            while pending:
                yield pending.popleft().result
        finally:
            self.model.train(was_training)

    def _forward(self, queued: list[tuple["_Region", tuple[int, ...], Variant]]) -> None:
        """One forward of `batch` items (the last repeated where fewer are queued), each output handed back."""
        items = queued + [queued[-1]] * (self.batch - len(queued))
        tiles = [region.tile(start, variant) for region, start, variant in items]
        # one tile goes as it is (the network's first convolution lays it out); several are stacked
        batch = tiles[0] if len(tiles) == 1 else torch.cat(tiles).contiguous(memory_format=torch.channels_last_3d)
        with torch.no_grad(), autocast(self.device, self.bf16):
            values = self.model(batch).float()
        for index, (region, start, variant) in enumerate(queued):
            region.add(start, variant.undo(values[index : index + 1]))


class _Region:
    """One region's passes in flight: the sum over variants per pass, and the region's output as passes finish."""

    def __init__(self, raw: torch.Tensor, predictor: Predictor, kind: str):
        self.raw, self.predictor, self.kind = raw, predictor, kind
        region = [r - 2 * c for r, c in zip(raw.shape, predictor.context)]
        covered = predictor.covered_shape(tuple(region))
        if list(covered) != region:
            raise ValueError(f"passes cover {covered}, not the region {region}: pad the region first")
        starts = [tile_starts(r, o, s) for r, o, s in zip(region, predictor.output_shape, predictor.steps)]
        self.starts = list(itertools.product(*starts))
        self.result = torch.empty(region, dtype=torch.float32, device=raw.device)
        self.sums: dict[tuple[int, ...], tuple[int, torch.Tensor]] = {}
        self.remaining = len(self.starts) * len(predictor.variants)

    def tile(self, start: tuple[int, ...], variant: Variant) -> torch.Tensor:
        window = self.raw[tuple(slice(s, s + i) for s, i in zip(start, self.predictor.input_shape))]
        return variant.apply(window[None, None])

    def add(self, start: tuple[int, ...], output: torch.Tensor) -> None:
        values = output if self.kind == "logits" else torch.sigmoid(output)
        self.remaining -= 1
        if len(self.predictor.variants) == 1:
            self._place(start, values)
            return
        count, total = self.sums.pop(start, (0, None))
        total = values if total is None else total.add_(values)  # (sigmoid's output is a fresh tensor)
        if count + 1 < len(self.predictor.variants):
            self.sums[start] = (count + 1, total)
        else:
            self._place(start, total.div_(count + 1))

    def _place(self, start: tuple[int, ...], values: torch.Tensor) -> None:
        self.result[tuple(slice(s, s + o) for s, o in zip(start, self.predictor.output_shape))] = values[0, 0]


def quantized(probabilities: torch.Tensor) -> torch.Tensor:
    """Probabilities -> uint8 round(255 p), in place where it can."""
    return probabilities.mul_(255).round_().to(torch.uint8)


def predict_region(
    model: UNet3D,
    raw: np.ndarray,
    input_shape: tuple[int, int, int],
    device: torch.device,
    bf16: bool = False,
    output: Literal["logits", "probabilities", "quantized"] = "logits",
    variants: tuple[Variant, ...] = NO_TTA,
    batch: int | None = None,
) -> np.ndarray:
    """Network output for the centre of `raw` (float32, normalized), which carries the network's context on each
    side: float32 logits (no variants only), float32 probabilities averaged over `variants`, or `quantized`
    uint8 round(255 * probability) (computed on the device).

    Passes of `input_shape` (a valid input of the model) start every `pass_step` voxels from the region's corner,
    so output voxel v comes from pass v // step whatever region it is computed in, as long as the region starts
    on the same grid. Where the last pass reaches past `raw`, `raw` is mirrored. `model` runs as it is (in eval
    mode): pass `inference_model(...)` of a model with batch norm to fold it into the convolutions. `batch`
    (default `default_batch`): see `Predictor`.
    """
    batch = batch or default_batch(device.type, len(variants), input_shape)
    predictor = Predictor(model, input_shape, device, bf16, variants, batch)
    region = [r - 2 * c for r, c in zip(raw.shape, predictor.context)]
    covered = predictor.covered_shape(tuple(region))
    if list(covered) != region:
        raw = np.pad(raw, [(0, c - r) for c, r in zip(covered, region)], mode="reflect")
    tensor = torch.from_numpy(np.ascontiguousarray(raw)).to(device)
    (values,) = predictor.outputs([tensor], "logits" if output == "logits" else "probabilities")
    values = values[tuple(slice(0, r) for r in region)]
    return (quantized(values) if output == "quantized" else values).cpu().numpy()


def probabilities(logits: np.ndarray) -> np.ndarray:
    return (1 / (1 + np.exp(-logits))).astype(np.float32)
