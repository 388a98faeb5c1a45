"""The gunpowder training graph and a deterministic, parallel stream of its batches.

Per training cell: array sources (raw, labels, cell mask, metric mask) cut to the cell's ROI; raw is mirrored
beyond its data (volumes thinner than the network input train), labels and masks are padded with zeros (weight
0); a random location; rejection of blocks mostly outside the cell and, with a probability, of blocks with
little foreground. A random provider picks a cell by its labelled volume. Then mirror + transpose (among the
axes of equal edge and voxel size: all three for a cubic input, y and x for a slice-wise one), elastic
deformation with x-y rotation, mirror + transpose again, intensity scale/shift, optional Gaussian noise, scaling
to [-1, 1] and the loss weights (class-balanced for the method's loss, 0/1 for BCE + Dice).

Sparse annotation: where a cell is annotated only in part (`CellData.sparse`), ANNOTATED marks its annotated
voxels; samples without any are redrawn, rejection asks for foreground among them, and the loss weights (and
class balancing) count them alone. Semi-supervised training adds a second graph of unlabelled raw regions,
augmented alike (`unlabelled_pipeline`).

A batch holds `batch_size` samples, each requested on its own. Sample k of batch i is requested with a seed
derived from (config seed, i, k), so the sequence of batches does not depend on how many processes prepare them:
`--resume` replays exactly, and `data_workers` only changes the speed.
"""

import copy
import logging
import math
import multiprocessing
from collections import deque
from collections.abc import Callable, Generator
from typing import Any

import gunpowder as gp
import numpy as np
from funlib.persistence import Array, open_ds

from incasem_like.core.errors import UserError
from incasem_like.core.geometry import Coordinate, Roi
from incasem_like.nn.normalization import IntensityRange, NormalizationRule
from incasem_like.training.config import CellVolumes, TrainConfig, normalization_rule, open_cells, open_unlabelled
from incasem_like.training.elastic import ElasticAugment
from incasem_like.training.loss import loss_weights

logger = logging.getLogger(__name__)

RAW = gp.ArrayKey("RAW")
LABELS = gp.ArrayKey("LABELS")
MASK = gp.ArrayKey("MASK")
METRIC_MASK = gp.ArrayKey("METRIC_MASK")
#: annotated voxels (1) of sparsely annotated cells
ANNOTATED = gp.ArrayKey("ANNOTATED")
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


class MapValues(gp.BatchFilter):
    """`key`'s values through `function`, voxel by voxel, into `dtype` (the array's ROI and voxel size stay)."""

    def __init__(self, key: gp.ArrayKey, function: Callable[[np.ndarray], np.ndarray], dtype: type):
        self.key, self.function, self.dtype = key, function, dtype

    def setup(self):
        self.enable_autoskip()
        spec = self.spec[self.key].copy()
        spec.dtype = self.dtype
        self.updates(self.key, spec)

    def prepare(self, request):
        deps = gp.BatchRequest()
        deps[self.key] = request[self.key].copy()
        deps[self.key].dtype = None
        return deps

    def process(self, batch, request):
        array = batch[self.key]
        array.data = self.function(array.data)
        array.spec.dtype = self.dtype


def binarized(key: gp.ArrayKey) -> MapValues:
    """Integer labels or mask -> uint8 0/1 (foreground = nonzero)."""
    return MapValues(key, lambda data: (data > 0).astype(np.uint8), np.uint8)


def normalized(key: gp.ArrayKey, intensity: IntensityRange) -> MapValues:
    """`key` -> float32 in 0..1 over an `IntensityRange` (`IntensityRange.unit`), as `predict` normalizes it."""
    return MapValues(key, intensity.unit, np.float32)


class Reject(gp.Reject):
    """gunpowder's Reject (on a mask's mean), but every retry asks with the request's next seed, and it does not
    wait silently: it warns after 100 and 1000 rejections in a row and gives up after `max_attempts`
    (`sampling.max_attempts`), keeping the reason in `gave_up` (a `UserError` naming `what` was asked and
    `fix`), which `BatchSource` raises.

    With seeded requests the original retries with the same seed, gets the same block back and waits forever.

    Each location is first probed with the mask (and `within`) alone, the other arrays placeholders (the random
    location, chosen for every ROI, is the same); only an accepted location is read whole, so a rejection costs
    no raw.
    """

    def __init__(
        self,
        mask,
        min_masked: float,
        what: str,
        fix: str,
        reject_probability=1.0,
        max_attempts=10000,
        within: gp.ArrayKey | None = None,
    ):
        super().__init__(mask=mask, min_masked=min_masked, reject_probability=reject_probability)
        self.what, self.fix, self.max_attempts, self.within = what, fix, max_attempts, within
        self.gave_up: UserError | None = None

    def share(self, batch: gp.Batch) -> float:
        """The mask's mean over the sample, or over its `within` voxels (0 where there are none)."""
        data = batch[self.mask].data
        if self.within is None:
            return float(data.mean())
        inside = batch[self.within].crop(batch[self.mask].spec.roi).data > 0
        return float(data[inside].mean()) if inside.any() else 0.0

    def provide(self, request):
        if self.within is not None and self.within not in request:
            request[self.within] = request[self.mask].copy()
        attempt, best = request, 0.0
        for attempts in range(1, self.max_attempts + 1):
            share = self.share(self.upstream_provider.request_batch(self.probe(attempt)))
            rng = np.random.default_rng(attempt.random_seed)
            if share > self.min_masked or rng.random() >= self.reject_probability:
                return self.upstream_provider.request_batch(attempt)
            best = max(best, share)
            if attempts in (100, 1000):
                logger.warning("%s: %d samples rejected in a row (best %.3f, needs > %g)", self.what, attempts, best,
                               self.min_masked)  # fmt: skip
            attempt = attempt.copy()  # a copy carries the next seed in the request's deterministic sequence
        self.gave_up = UserError(
            f"{self.what}: no acceptable sample in {self.max_attempts} random locations (at most {best:.3f} of a "
            f"sample, needs more than {self.min_masked:g}); {self.fix}"
        )
        raise self.gave_up

    def probe(self, request: gp.BatchRequest) -> gp.BatchRequest:
        """`request` (its seed too) with every array but the mask and `within` a placeholder."""
        probe = copy.deepcopy(request)
        for key, spec in probe.items():
            spec.placeholder = key not in (self.mask, self.within)
        return probe


class RandomLocation(gp.RandomLocation):
    """gunpowder's RandomLocation (chosen for every ROI of a request, placeholders included), which asks upstream
    without the placeholders (`Reject`'s probes name them; gunpowder's sources cannot provide one)."""

    def prepare(self, request):
        super().prepare(request)
        request.remove_placeholders()
        return request


class GaussianNoise(gp.BatchFilter):
    """RAW (float, 0..1) plus Gaussian noise of a standard deviation drawn from [0, max_sigma], in a share
    `probability` of the samples; seeded by the request, so batches stay reproducible."""

    def __init__(self, key: gp.ArrayKey, max_sigma: float, probability: float):
        self.key, self.max_sigma, self.probability = key, max_sigma, probability

    def setup(self):
        self.enable_autoskip()
        self.updates(self.key, self.spec[self.key])

    def prepare(self, request):
        deps = gp.BatchRequest()
        deps[self.key] = request[self.key].copy()
        return deps

    #: mixed into the request's seed: other nodes draw from it too (Reject's draw would decide this one's)
    SALT = 0x6E6F6973

    def process(self, batch, request):
        rng = np.random.default_rng([request.random_seed, self.SALT])
        if rng.random() >= self.probability:
            return
        array = batch[self.key]
        noise = rng.standard_normal(array.data.shape, dtype=np.float32) * rng.uniform(0, self.max_sigma)
        array.data = array.data + noise


class Annotation(gp.BatchFilter):
    """A sparsely annotated cell's LABELS (their values) -> 0/1 foreground where annotated, and ANNOTATED -> 0/1
    the annotated voxels (`CellVolumes.annotation`)."""

    def __init__(self, cell: CellVolumes):
        self.cell = cell

    def setup(self):
        self.enable_autoskip()  # `Reject`'s probes may ask for neither
        for key in (LABELS, ANNOTATED):
            spec = self.spec[key].copy()
            spec.dtype = np.uint8
            self.updates(key, spec)

    def prepare(self, request):
        rois = [request[key].roi for key in (LABELS, ANNOTATED) if key in request]
        roi = rois[0] if len(rois) == 1 else rois[0].union(rois[1])
        deps = gp.BatchRequest()
        for key in (LABELS, ANNOTATED):
            deps[key] = gp.ArraySpec(roi=roi)
        return deps

    def process(self, batch, request):
        labels = batch[LABELS]
        annotated = self.cell.annotation(labels.spec.roi, labels.data, batch[ANNOTATED].data)
        outputs = gp.Batch()
        for key, data in ((LABELS, (labels.data > 0) & annotated), (ANNOTATED, annotated)):
            if key in request:
                spec = batch[key].spec.copy()
                spec.dtype = np.uint8
                outputs[key] = gp.Array(data.astype(np.uint8), spec).crop(request[key].roi)
        return outputs


class LossWeights(gp.BatchFilter):
    """WEIGHTS: the loss's per-voxel weights (`loss_weights`), 0 outside the cell, in the metric exclusion zone and,
    with `sparse` annotation, on unannotated voxels (class balancing then counts annotated voxels only)."""

    def __init__(self, loss: str, max_class_ratio: float, sparse: bool = False):
        self.loss, self.max_class_ratio, self.sparse = loss, max_class_ratio, sparse
        self.counted_keys = (MASK, METRIC_MASK, ANNOTATED) if sparse else (MASK, METRIC_MASK)

    def setup(self):
        spec = self.spec[LABELS].copy()
        spec.dtype = np.float32
        self.provides(WEIGHTS, spec)

    def prepare(self, request):
        deps = gp.BatchRequest()
        for key in (LABELS, *self.counted_keys):
            deps[key] = request[WEIGHTS].copy()
        return deps

    def process(self, batch, request):
        counted = np.logical_and.reduce([batch[key].data > 0 for key in self.counted_keys])
        spec = batch[LABELS].spec.copy()
        spec.dtype = np.float32
        outputs = gp.Batch()
        weights = loss_weights(self.loss, batch[LABELS].data, counted, self.max_class_ratio)
        outputs[WEIGHTS] = gp.Array(weights, spec)
        return outputs


#: datasets up to this size are read into memory once per batch-preparing process: a thin (2D) sample then costs
#: no decompression of whole 3D chunks (one slice of 128^3 chunks decompresses 128 times the voxels it uses)
IN_MEMORY_BYTES = 2**30


def _array_source(key: gp.ArrayKey, cell: CellVolumes, role: str, interpolatable: bool) -> gp.BatchProvider:
    path, volume = cell.cell.path(cell.cell.datasets()[role]).array_path, cell.volumes[role]
    # in world units, from the OME-Zarr metadata (funlib's own attributes of older containers are in nm)
    array = open_ds(str(path), voxel_size=volume.voxel_size, offset=volume.offset, units=["fm"] * 3)
    if array.data.nbytes <= IN_MEMORY_BYTES:
        array = Array(array.to_ndarray(array.roi), array.offset, array.voxel_size, array.axis_names, array.units)
    return gp.ArraySource(key, array, interpolatable=interpolatable)


def cell_pipeline(
    cell: CellVolumes, config: TrainConfig, output_shape: Coordinate, intensity: IntensityRange, sparse: bool
) -> gp.Pipeline:
    """Sources of one cell, raw normalized over `intensity`, cut to its ROI, padded, at random locations, with
    rejection; with `sparse` (some cell is sparsely annotated) also ANNOTATED, and the foreground share that
    rejection asks for is that of the annotated voxels."""
    voxel_size = cell.voxel_size
    pad = (output_shape // 2) * voxel_size
    normalize = normalized(RAW, intensity)
    sources = [_array_source(RAW, cell, "raw", True) + normalize + gp.Pad(RAW, None, mode="reflect")]
    roles = {LABELS: "labels", MASK: "mask", METRIC_MASK: "metric_mask"} | ({ANNOTATED: "annotated"} if sparse else {})
    for key, role in roles.items():
        if role in cell.volumes:
            source = _array_source(key, cell, role, False)
            source += gp.Crop(key, cell.roi) if key == LABELS and sparse else binarized(key) + gp.Crop(key, cell.roi)
        else:
            source = Ones(key, cell.roi, voxel_size)
        sources.append(source + gp.Pad(key, pad))
    sampling = config.sampling
    pipeline = tuple(sources) + gp.MergeProvider()
    if sparse:
        pipeline += Annotation(cell)
    pipeline += RandomLocation()
    if cell.cell.sparse():  # a sample without annotated voxels teaches nothing (a slice-wise sample often has none)
        pipeline += Reject(
            ANNOTATED,
            0.0,
            f"{cell.key}: annotated share of a sample",
            f"check {cell.key}'s annotated slices or mask",
            max_attempts=sampling.max_attempts,
        )
    if sampling.max_outside_mask < 1:
        pipeline += Reject(
            MASK,
            1 - sampling.max_outside_mask,
            f"{cell.key}: share of a sample inside the cell mask",
            f"raise sampling.max_outside_mask or check {cell.key}'s mask and roi",
            max_attempts=sampling.max_attempts,
        )
    if sampling.min_foreground > 0 and sampling.reject_probability > 0:
        pipeline += Reject(
            LABELS,
            sampling.min_foreground,
            f"{cell.key}: foreground share of a sample" + (" (of its annotated voxels)" if sparse else ""),
            f"lower sampling.min_foreground or sampling.reject_probability, or check {cell.key}'s labels",
            reject_probability=sampling.reject_probability,
            max_attempts=sampling.max_attempts,
            within=ANNOTATED if sparse else None,
        )
    return pipeline


def annotated_voxels(cell: CellVolumes) -> tuple[int, int]:
    """Annotated voxels and annotated foreground voxels of a cell's labels inside its ROI (read in chunk-deep
    slabs; every voxel of a densely annotated cell is annotated)."""
    labels, annotated = cell.volumes["labels"], cell.volumes.get("annotated")
    depth = max(1, labels.data.chunks[0]) * labels.voxel_size[0]
    counts = [0, 0]
    for z in range(cell.roi.begin[0], cell.roi.end[0], depth):
        slab = cell.roi.intersect(Roi((z, *cell.roi.begin[1:]), (depth, *cell.roi.shape[1:])))
        values = labels[slab]
        if cell.cell.sparse():
            inside = cell.annotation(slab, values, None if annotated is None else annotated[slab])
            counts[0] += int(np.count_nonzero(inside))
            counts[1] += int(np.count_nonzero((values > 0) & inside))
        else:
            counts[0] += values.size
            counts[1] += int(np.count_nonzero(values))
    return counts[0], counts[1]


def transposable_axes(config: TrainConfig, voxel_size: Coordinate) -> list[int]:
    """The axes that may be swapped with each other: those sharing the input edge, output edge and voxel size of
    y (x always does, in the shapes this project trains), or none if y and x differ."""
    shapes = list(zip(config.network.input_shape, config.network.output_shape(), voxel_size))
    if shapes[1] != shapes[2]:
        return []
    return [axis for axis in range(3) if shapes[axis] == shapes[1]]


def training_pipeline(
    config: TrainConfig, cells: list[CellVolumes], probabilities: list[float], ranges: dict[str, IntensityRange]
) -> gp.Pipeline:
    """The whole graph, ending in RAW (in [-1, 1]), LABELS (0/1) and WEIGHTS; cells are drawn by `probabilities`
    and normalized over their `ranges` (by key)."""
    output_shape = Coordinate(config.network.output_shape())
    sparse = any(cell.cell.sparse() for cell in cells)
    pipeline = tuple(cell_pipeline(cell, config, output_shape, ranges[cell.key], sparse) for cell in cells)
    pipeline += gp.RandomProvider(probabilities=probabilities)
    pipeline = augmented(pipeline, config, cells[0].voxel_size)
    pipeline += LossWeights(config.loss, config.max_class_ratio, sparse)
    return pipeline


def unlabelled_pipeline(config: TrainConfig, regions: list[CellVolumes], ranges: dict[str, IntensityRange]):
    """RAW (in [-1, 1]) of semi-supervised training's unlabelled regions, drawn by volume, augmented as the
    labelled data."""
    sources = tuple(
        _array_source(RAW, region, "raw", True)
        + normalized(RAW, ranges[region.key])
        + gp.Crop(RAW, region.roi)
        + gp.RandomLocation()
        for region in regions
    )
    volumes = [math.prod(region.roi.shape / region.voxel_size) for region in regions]
    pipeline = sources + gp.RandomProvider(probabilities=[v / sum(volumes) for v in volumes])
    return augmented(pipeline, config, regions[0].voxel_size)


def augmented(pipeline, config: TrainConfig, voxel_size: Coordinate):
    """`pipeline` with the configured augmentations and RAW scaled from 0..1 to [-1, 1]."""
    augmentation = config.augmentation
    mirror_transpose = gp.SimpleAugment(transpose_only=transposable_axes(config, voxel_size))
    if augmentation.mirror_transpose:
        pipeline += mirror_transpose
    if augmentation.elastic:
        elastic = augmentation.elastic
        # without z jitter the deformation is the same in every z section: a 2D one is that, at a third of the cost
        dims = 2 if elastic.jitter()[0] == 0 else 3
        pipeline += ElasticAugment(
            control_point_spacing=elastic.spacing()[-dims:],
            jitter_sigma=elastic.jitter()[-dims:],
            rotation_interval=(0, math.pi / 2) if elastic.rotate_xy else (0, 0),
            subsample=elastic.subsample,
            spatial_dims=dims,
            p=elastic.probability,
        )
    if augmentation.mirror_transpose:
        pipeline += gp.SimpleAugment(transpose_only=mirror_transpose.transpose_only)
    if augmentation.intensity:
        scale, shift = augmentation.intensity.scale, augmentation.intensity.shift
        pipeline += gp.IntensityAugment(RAW, scale[0], scale[1], shift[0], shift[1])
    if augmentation.noise:
        pipeline += GaussianNoise(RAW, augmentation.noise.max_sigma, augmentation.noise.probability)
    return pipeline + gp.IntensityScaleShift(RAW, 2, -1)


def batch_request(config: TrainConfig, voxel_size: Coordinate, seed: int) -> gp.BatchRequest:
    request = gp.BatchRequest(random_seed=seed)
    request.add(RAW, Coordinate(config.network.input_shape) * voxel_size)
    for key in (LABELS, WEIGHTS):
        request.add(key, Coordinate(config.network.output_shape()) * voxel_size)
    return request


def batch_seed(config_seed: int, iteration: int, sample: int = 0, stream: int = 0) -> int:
    """The seed of sample `sample` of batch `iteration` of `stream` (`TRAINING`, `CALIBRATION`, `UNLABELLED`),
    independent of which process prepares it (sample 0 of training keeps the seed a batch of one has always had)."""
    entropy = [config_seed, iteration] + ([sample] if sample or stream else []) + ([stream] if stream else [])
    return int(np.random.SeedSequence(entropy).generate_state(1)[0])


#: the streams of batches: training, batch-norm calibration, and (mixed into a sample's seed) unlabelled samples
TRAINING, CALIBRATION, UNLABELLED = 0, 1, 2


def batch_kinds(config: TrainConfig, iteration: int) -> tuple[str, ...]:
    """What training batch `iteration` holds: labelled samples, and with semi-supervised training unlabelled ones
    too (`joint`) or instead on odd iterations (`alternate`)."""
    semi = config.semi_supervised
    if semi is None:
        return ("labelled",)
    if semi.schedule == "joint":
        return ("labelled", "unlabelled")
    return ("unlabelled",) if iteration % 2 else ("labelled",)


def normalization_ranges(rule: NormalizationRule, cells: list[CellVolumes]) -> dict[str, IntensityRange]:
    """Each cell's (or region's) normalization range by `rule`, by key (percentiles read its whole raw dataset)."""
    return {cell.key: rule.range_of(cell.volumes["raw"]) for cell in cells}


def calibration_config(config: TrainConfig) -> TrainConfig:
    """`config` without elastic, intensity and noise augmentation and without rejecting blocks for little foreground:
    its batches are the training data as prediction sees it (the interpolation of elastic deformation and
    rotation smooths the images, and the rejection favours foreground, both of which shift the statistics batch
    norm would otherwise learn)."""
    augmentation = config.augmentation.model_copy(update={"elastic": None, "intensity": None, "noise": None})
    sampling = config.sampling.model_copy(update={"reject_probability": 0.0})
    update = {"augmentation": augmentation, "sampling": sampling, "data_workers": 0, "semi_supervised": None}
    return config.model_copy(update=update)


def check_trainable(config: TrainConfig, cells: list[CellVolumes]) -> None:
    """Training ROIs must hold at least one network output (otherwise say which input shape would fit) and, when
    sparsely annotated, an annotated voxel."""
    output_shape = Coordinate(config.network.output_shape())
    for cell in cells:
        if cell.cell.sparse() and annotated_voxels(cell)[0] == 0:
            raise UserError(
                f"{cell.key}: no voxel of its roi is annotated (annotated, annotated_slices, unannotated_label "
                "leave none); check the annotated mask and slices, or leave the cell out"
            )
        roi_shape = cell.roi.shape / cell.voxel_size
        if any(r < o for r, o in zip(roi_shape, output_shape)):
            raise UserError(
                f"{cell.key}.roi: shape {list(roi_shape)} (voxels) is smaller than the network output "
                f"{list(output_shape)}; annotate a larger region or choose a smaller network.input_shape"
            )


class BatchSource:
    """The training graph built once in this process: batch(i) -> dict of numpy arrays (raw, labels, weights; with
    semi-supervised training also or instead `unlabelled` raw, `batch_kinds`)."""

    def __init__(
        self,
        config: TrainConfig,
        probabilities: list[float] | None = None,
        ranges: dict[str, IntensityRange] | None = None,
    ):
        self.config = config
        cells, validation = open_cells(config)
        check_trainable(config, cells)
        unlabelled = open_unlabelled(config, cells[0])
        if probabilities is None:
            probabilities = cell_probabilities(cells)
        if ranges is None:
            ranges = normalization_ranges(normalization_rule(config, cells + validation), cells + unlabelled)
        self.voxel_size = cells[0].voxel_size
        self.pipeline = training_pipeline(config, cells, probabilities, ranges)
        self.unlabelled = unlabelled_pipeline(config, unlabelled, ranges) if unlabelled else None
        self._builds = [gp.build(p) for p in (self.pipeline, self.unlabelled) if p is not None]
        for build in self._builds:
            build.__enter__()

    def batch(self, iteration: int, stream: int = 0) -> dict[str, Any]:
        """Batch `iteration` of `stream`: raw, labels and weights stacked over its samples (N, z, y, x), and where
        its first sample was taken (for the snapshot); `unlabelled` raw where `batch_kinds` asks for it."""
        batch: dict[str, Any] = {"iteration": iteration}
        kinds = batch_kinds(self.config, iteration) if stream == TRAINING else ("labelled",)
        if "labelled" in kinds:
            seeds = [
                batch_seed(self.config.seed, iteration, sample, stream) for sample in range(self.config.batch_size)
            ]
            samples = [self._sample(batch_request(self.config, self.voxel_size, seed)) for seed in seeds]
            batch |= {
                "raw": np.stack([s[RAW].data.astype(np.float32, copy=False) for s in samples]),
                "labels": np.stack([s[LABELS].data for s in samples]),
                "weights": np.stack([s[WEIGHTS].data for s in samples]),
                "raw_offset": tuple(samples[0][RAW].spec.roi.offset),
                "labels_offset": tuple(samples[0][LABELS].spec.roi.offset),
            }
        if "unlabelled" in kinds:
            assert self.unlabelled is not None, "semi-supervised configs have unlabelled regions"
            shape = Coordinate(self.config.network.input_shape) * self.voxel_size
            requests = [
                gp.BatchRequest(random_seed=batch_seed(self.config.seed, iteration, sample, UNLABELLED))
                for sample in range(self.config.batch_size)
            ]
            for request in requests:
                request.add(RAW, shape)
            batch["unlabelled"] = np.stack([self.unlabelled.request_batch(r)[RAW].data for r in requests])
        return batch

    def _sample(self, request: gp.BatchRequest) -> gp.Batch:
        try:
            return self.pipeline.request_batch(request)
        except gp.PipelineRequestError:
            gave_up = [node.gave_up for node in _nodes(self.pipeline) if getattr(node, "gave_up", None)]
            if gave_up:
                raise gave_up[0] from None
            raise

    def close(self) -> None:
        for build in self._builds:
            build.__exit__(None, None, None)


def _nodes(pipeline: gp.Pipeline) -> list[gp.BatchProvider]:
    nodes = []
    pipeline.traverse(lambda part: nodes.append(part.output))
    return nodes


def cell_probabilities(cells: list[CellVolumes]) -> list[float]:
    """Chance of each training cell: its share of the labelled voxels (uniform if none is labelled)."""
    counts = [annotated_voxels(cell)[1] for cell in cells]
    total = sum(counts)
    return [count / total for count in counts] if total else [1 / len(cells)] * len(cells)


_worker_source: BatchSource | None = None


def _start_worker(config_json: str, probabilities: list[float], ranges: dict[str, IntensityRange] | None) -> None:
    global _worker_source
    _worker_source = BatchSource(TrainConfig.model_validate_json(config_json), probabilities, ranges)


def _worker_batch(iteration: int) -> dict[str, Any]:
    assert _worker_source is not None, "the pool's initializer sets it"
    return _worker_source.batch(iteration)


def batch_stream(
    config: TrainConfig,
    start: int,
    stop: int,
    probabilities: list[float],
    ranges: dict[str, IntensityRange] | None = None,
) -> Generator[dict]:
    """Batches start..stop-1 in order (see `BatchSource`: `ranges` are found by each process where not given);
    `config.data_workers` processes prepare up to 2 per worker ahead."""
    if config.data_workers == 0:
        source = BatchSource(config, probabilities, ranges)
        try:
            for iteration in range(start, stop):
                yield source.batch(iteration)
        finally:
            source.close()
        return
    context = multiprocessing.get_context("spawn")  # no fork of a process that holds torch threads
    with context.Pool(config.data_workers, _start_worker, (config.model_dump_json(), probabilities, ranges)) as pool:
        pending: deque = deque()
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
