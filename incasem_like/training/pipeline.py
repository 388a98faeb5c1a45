"""The gunpowder training graph and a deterministic, parallel stream of its batches.

Per training cell: array sources (raw, labels, cell mask, metric mask) cut to the cell's ROI; raw is mirrored
beyond its data (volumes thinner than the network input train), labels and masks are padded with zeros (weight
0); a random location; rejection of blocks mostly outside the cell and, with a probability, of blocks with
little foreground. A random provider picks a cell by its labelled volume. Then mirror + transpose, elastic
deformation with x-y rotation, mirror + transpose again, intensity scale/shift, scaling to [-1, 1] and the
class-balanced loss weights.

Batch i is requested with a seed derived from (config seed, i), so the sequence of batches does not depend on
how many processes prepare them: `--resume` replays exactly, and `data_workers` only changes the speed.
"""

import math
import multiprocessing
from collections import deque
from collections.abc import Iterator

import gunpowder as gp
import numpy as np
from funlib.persistence import open_ds

from incasem_like.errors import UserError
from incasem_like.geometry import Coordinate, Roi
from incasem_like.training.config import CellVolumes, TrainConfig, open_cells
from incasem_like.training.loss import balanced_weights

RAW = gp.ArrayKey("RAW")
LABELS = gp.ArrayKey("LABELS")
MASK = gp.ArrayKey("MASK")
METRIC_MASK = gp.ArrayKey("METRIC_MASK")
WEIGHTS = gp.ArrayKey("WEIGHTS")


class Ones(gp.BatchProvider):
    """A mask of ones over `roi` (for cells without a cell mask or metric mask)."""

    def __init__(self, key: gp.ArrayKey, roi: Roi, voxel_size: Coordinate):
        self.key, self.roi, self.voxel_size = key, roi, voxel_size

    def setup(self):
        self.provides(self.key, gp.ArraySpec(self.roi, self.voxel_size, interpolatable=False, dtype=np.uint8))

    def provide(self, request):
        spec = self.spec[self.key].copy()
        spec.roi = request[self.key].roi
        batch = gp.Batch()
        batch[self.key] = gp.Array(np.ones(spec.roi.shape / self.voxel_size, dtype=np.uint8), spec)
        return batch


class Binarize(gp.BatchFilter):
    """Integer labels or mask -> uint8 0/1 (foreground = nonzero)."""

    def __init__(self, key: gp.ArrayKey):
        self.key = key

    def setup(self):
        self.enable_autoskip()
        spec = self.spec[self.key].copy()
        spec.dtype = np.uint8
        self.updates(self.key, spec)

    def prepare(self, request):
        deps = gp.BatchRequest()
        deps[self.key] = request[self.key].copy()
        deps[self.key].dtype = None
        return deps

    def process(self, batch, request):
        array = batch[self.key]
        array.data = (array.data > 0).astype(np.uint8)
        array.spec.dtype = np.uint8


class Reject(gp.Reject):
    """gunpowder's Reject (on a mask's mean), but every retry asks with the request's next seed.

    With seeded requests the original retries with the same seed, gets the same block back and waits forever.
    """

    def provide(self, request):
        attempt = request
        while True:
            batch = self.upstream_provider.request_batch(attempt)
            if batch[self.mask].data.mean() > self.min_masked:
                return batch
            if np.random.default_rng(attempt.random_seed).random() >= self.reject_probability:
                return batch
            attempt = attempt.copy()  # a copy carries the next seed in the request's deterministic sequence


class BalanceWeights(gp.BatchFilter):
    """WEIGHTS: class-balanced loss weights, 0 outside the cell and in the metric exclusion zone."""

    def __init__(self, max_class_ratio: float):
        self.max_class_ratio = max_class_ratio

    def setup(self):
        spec = self.spec[LABELS].copy()
        spec.dtype = np.float32
        self.provides(WEIGHTS, spec)

    def prepare(self, request):
        deps = gp.BatchRequest()
        for key in (LABELS, MASK, METRIC_MASK):
            deps[key] = request[WEIGHTS].copy()
        return deps

    def process(self, batch, request):
        counted = (batch[MASK].data > 0) & (batch[METRIC_MASK].data > 0)
        spec = batch[LABELS].spec.copy()
        spec.dtype = np.float32
        outputs = gp.Batch()
        outputs[WEIGHTS] = gp.Array(balanced_weights(batch[LABELS].data, counted, self.max_class_ratio), spec)
        return outputs


def _array_source(key: gp.ArrayKey, cell: CellVolumes, role: str, interpolatable: bool) -> gp.BatchProvider:
    path = cell.cell.path(cell.cell.datasets()[role]).array_path
    return gp.ArraySource(key, open_ds(str(path)), interpolatable=interpolatable)


def cell_pipeline(cell: CellVolumes, config: TrainConfig, output_shape: Coordinate) -> gp.Pipeline:
    """Sources of one cell, cut to its ROI, padded, at random locations, with rejection."""
    voxel_size = cell.voxel_size
    pad = (output_shape // 2) * voxel_size
    sources = [_array_source(RAW, cell, "raw", True) + gp.Normalize(RAW) + gp.Pad(RAW, None, mode="reflect")]
    for key, role in ((LABELS, "labels"), (MASK, "mask"), (METRIC_MASK, "metric_mask")):
        if role in cell.volumes:
            source = _array_source(key, cell, role, False) + Binarize(key) + gp.Crop(key, cell.roi)
        else:
            source = Ones(key, cell.roi, voxel_size)
        sources.append(source + gp.Pad(key, pad))
    sampling = config.sampling
    pipeline = tuple(sources) + gp.MergeProvider() + gp.RandomLocation()
    if sampling.max_outside_mask < 1:
        pipeline += Reject(mask=MASK, min_masked=1 - sampling.max_outside_mask)
    if sampling.min_foreground > 0 and sampling.reject_probability > 0:
        pipeline += Reject(
            mask=LABELS, min_masked=sampling.min_foreground, reject_probability=sampling.reject_probability
        )
    return pipeline


def labelled_voxels(cell: CellVolumes) -> int:
    """Foreground voxels of a cell's labels inside its ROI (read chunk by chunk)."""
    labels = cell.volumes["labels"]
    begin = (cell.roi.begin - labels.offset) / labels.voxel_size
    end = (cell.roi.end - labels.offset) / labels.voxel_size
    step = max(1, labels.data.chunks[0])
    return sum(
        int(np.count_nonzero(labels.data[z : min(z + step, end[0]), begin[1] : end[1], begin[2] : end[2]]))
        for z in range(begin[0], end[0], step)
    )


def training_pipeline(config: TrainConfig, cells: list[CellVolumes], probabilities: list[float]) -> gp.Pipeline:
    """The whole graph, ending in RAW (in [-1, 1]), LABELS (0/1) and WEIGHTS."""
    output_shape = Coordinate(config.network.output_shape())
    pipeline = tuple(cell_pipeline(cell, config, output_shape) for cell in cells)
    pipeline += gp.RandomProvider(probabilities=probabilities)
    augmentation = config.augmentation
    if augmentation.mirror_transpose:
        pipeline += gp.SimpleAugment()
    if augmentation.elastic:
        elastic = augmentation.elastic
        pipeline += gp.ElasticAugment(
            control_point_spacing=(elastic.control_point_spacing,) * 3,
            jitter_sigma=(elastic.jitter_sigma,) * 3,
            rotation_interval=(0, math.pi / 2) if elastic.rotate_xy else (0, 0),
            subsample=elastic.subsample,
        )
    if augmentation.mirror_transpose:
        pipeline += gp.SimpleAugment()
    if augmentation.intensity:
        scale, shift = augmentation.intensity.scale, augmentation.intensity.shift
        pipeline += gp.IntensityAugment(RAW, scale[0], scale[1], shift[0], shift[1])
    pipeline += gp.IntensityScaleShift(RAW, 2, -1)
    pipeline += BalanceWeights(config.max_class_ratio)
    return pipeline


def batch_request(config: TrainConfig, voxel_size: Coordinate, seed: int) -> gp.BatchRequest:
    request = gp.BatchRequest(random_seed=seed)
    request.add(RAW, Coordinate(config.network.input_shape) * voxel_size)
    for key in (LABELS, WEIGHTS):
        request.add(key, Coordinate(config.network.output_shape()) * voxel_size)
    return request


def batch_seed(config_seed: int, iteration: int) -> int:
    """The seed of batch `iteration`: independent of which process prepares it."""
    return int(np.random.SeedSequence([config_seed, iteration]).generate_state(1)[0])


def check_trainable(config: TrainConfig, cells: list[CellVolumes]) -> None:
    """Training ROIs must hold at least one network output; otherwise say which input shape would fit."""
    output_shape = Coordinate(config.network.output_shape())
    for cell in cells:
        roi_shape = cell.roi.shape / cell.voxel_size
        if any(r < o for r, o in zip(roi_shape, output_shape)):
            raise UserError(
                f"{cell.key}.roi: shape {list(roi_shape)} (voxels) is smaller than the network output "
                f"{list(output_shape)}; annotate a larger region or choose a smaller network.input_shape"
            )


class BatchSource:
    """The training graph built once in this process: batch(i) -> dict of numpy arrays (raw, labels, weights)."""

    def __init__(self, config: TrainConfig, probabilities: list[float] | None = None):
        self.config = config
        cells, _ = open_cells(config)
        check_trainable(config, cells)
        if probabilities is None:
            probabilities = cell_probabilities(cells)
        self.voxel_size = cells[0].voxel_size
        self.pipeline = training_pipeline(config, cells, probabilities)
        self._build = gp.build(self.pipeline)
        self._build.__enter__()

    def batch(self, iteration: int) -> dict[str, np.ndarray]:
        request = batch_request(self.config, self.voxel_size, batch_seed(self.config.seed, iteration))
        batch = self.pipeline.request_batch(request)
        return {
            "iteration": iteration,
            "raw": batch[RAW].data.astype(np.float32, copy=False),
            "labels": batch[LABELS].data,
            "weights": batch[WEIGHTS].data,
            "raw_offset": tuple(batch[RAW].spec.roi.offset),
            "labels_offset": tuple(batch[LABELS].spec.roi.offset),
        }

    def close(self) -> None:
        self._build.__exit__(None, None, None)


def cell_probabilities(cells: list[CellVolumes]) -> list[float]:
    """Chance of each training cell: its share of the labelled voxels (uniform if none is labelled)."""
    counts = [labelled_voxels(cell) for cell in cells]
    total = sum(counts)
    return [count / total for count in counts] if total else [1 / len(cells)] * len(cells)


_worker_source: BatchSource | None = None


def _start_worker(config_json: str, probabilities: list[float]) -> None:
    global _worker_source
    _worker_source = BatchSource(TrainConfig.model_validate_json(config_json), probabilities)


def _worker_batch(iteration: int) -> dict[str, np.ndarray]:
    return _worker_source.batch(iteration)


def batch_stream(config: TrainConfig, start: int, stop: int, probabilities: list[float]) -> Iterator[dict]:
    """Batches start..stop-1 in order; `config.data_workers` processes prepare up to 2 per worker ahead."""
    if config.data_workers == 0:
        source = BatchSource(config, probabilities)
        try:
            for iteration in range(start, stop):
                yield source.batch(iteration)
        finally:
            source.close()
        return
    context = multiprocessing.get_context("spawn")  # no fork of a process that holds torch threads
    with context.Pool(config.data_workers, _start_worker, (config.model_dump_json(), probabilities)) as pool:
        pending = deque()
        upcoming = iter(range(start, stop))
        for iteration in upcoming:
            pending.append(pool.apply_async(_worker_batch, (iteration,)))
            if len(pending) >= 2 * config.data_workers:
                break
        while pending:
            batch = pending.popleft().get()
            next_iteration = next(upcoming, None)
            if next_iteration is not None:
                pending.append(pool.apply_async(_worker_batch, (next_iteration,)))
            yield batch
