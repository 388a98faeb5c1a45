"""Stage `predict`: a trained U-Net over a cell on daisy workers -> probabilities and segmentation (OME-Zarr).

Passes. The network runs on passes whose outputs tile the requested ROI on one grid anchored at the ROI's first
voxel: pass k contributes output voxels [k * step, (k + 1) * step) along each axis (`step` is a multiple of the
network's downsampling factor; the few output voxels a pass computes past it are dropped). A block runs the
passes that cover its write ROI, so every voxel comes from the same pass, fed the same input, whatever the block
size, the number of workers, their order or a resume: the outputs are bit-identical. Input beyond the data is
mirrored, so the whole ROI is predicted, borders included.

Storage. Probabilities as uint8 q = round(255 p), computed on the device; the segmentation is q / 255 > threshold,
the rule `threshold` applies later. With test-time augmentation each pass runs in its mirrored (and transposed)
variants, whose probabilities are averaged before quantization. With a clean-up (small objects removed, small
holes filled), the segmentation is written afterwards by the `threshold` stage from the stored probabilities,
which reads the context the clean-up needs (`prediction_stages`).

Defaults from the model. An exported model records the threshold, test-time augmentation and clean-up it was
chosen with (`recommended_settings`); `predict` uses them unless told otherwise.

Normalization. The raw data (unsigned, signed or float) is normalized by the rule the model was trained with
(`nn.normalization`: bit depth for unsigned raw, each volume's own percentiles for float tomograms); the range it
gives on the whole raw dataset is computed once, when the outputs are created, and recorded in their provenance,
so every block, worker and resumed run uses the same one.

Overlap. Within a block `io_threads` reader threads load (and decode, chunks kept per worker) the next z-rows of
passes while the network runs on the current one; rows go to the device, are normalized there, and their passes
run in forwards of exactly `batch` passes (`nn.inference.Predictor`); quantized and thresholded on the device,
they come back and are written by `io_threads` writer threads in chunk-aligned slabs (`nn.data_path`); a block is
reported done only after all its writes.
"""

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from daisy import Block, Context
from pydantic import Field, field_validator, model_validator

from incasem_like.blockwise.outputs import DatasetOutput, StageOutput
from incasem_like.blockwise.stage import BlockLayout, BlockwiseStage, check_block
from incasem_like.blockwise.volume_stage import requested_roi
from incasem_like.core.bounds import Edges, VoxelOffsets, Voxels
from incasem_like.core.errors import FieldError, UserError
from incasem_like.core.files import file_digest
from incasem_like.core.geometry import Coordinate, Roi, nm_text, to_world
from incasem_like.nn.checkpoints import load_checkpoint, model_from_checkpoint
from incasem_like.nn.data_path import DataPath, SlabWriter, Timer
from incasem_like.nn.inference import Predictor, TtaMode, default_batch, quantized, select_device, tta_variants
from incasem_like.nn.model import NetworkConfig, Triple, inference_model
from incasem_like.nn.normalization import IntensityRange, NormalizationRule, checkpoint_rule
from incasem_like.ops.morphology import segmentation_cutoff
from incasem_like.stages.threshold import CleanUp, Threshold, ThresholdStage
from incasem_like.store.datasets import (
    DEFAULT_CHUNK,
    DatasetPath,
    Volume,
    create_dataset,
    dataset_meta,
    open_dataset,
    recorded_preprocessing,
)

logger = logging.getLogger(__name__)

PROBABILITIES = "probabilities"
SEGMENTATION = "segmentation"


def default_precision(device: str) -> Literal["bf16", "fp32"]:
    """bf16 on GPUs that support it; float32 on CPUs (bf16 is many times slower without AVX512-BF16/AMX)."""
    return "bf16" if device == "cuda" and torch.cuda.is_bf16_supported() else "fp32"


def recommended_settings(checkpoint: str) -> dict:
    """What an exported model was chosen with and `predict` uses by default: `threshold` (else 0.5), `tta`
    (else none) and `clean_up` (else none)."""
    state = load_checkpoint(checkpoint)
    return {
        "threshold": float(state.get("threshold") or 0.5),
        "tta": state.get("tta") or "none",
        "clean_up": CleanUp.model_validate(state.get("clean_up") or {}),
    }


def default_step(network: NetworkConfig, device: str = "cpu") -> Triple:
    """Output voxels per pass along z, y, x: for a network that pools along z 128 each on a CPU (activations that
    stay in cache) and 256 on a GPU (the method's network: 356^3 inputs instead of 228^3, so 37% of a pass's input
    is output instead of 18%: half the arithmetic per output voxel, ~15 GB of bf16 activations). One that does not
    (slice-wise 2D, or 2.5D) runs on 256 x 256 in-plane (less of its in-plane context wasted) and 16 slices on a
    GPU, but 2 on a CPU: a pass's activations then stay in cache (the bundled 2.5D model's forward pass on 2
    cores: 0.88 M output voxels/s on 2 slices, 0.49 M on 16)."""
    if network.total_factor()[0] > 1:
        return (128, 128, 128) if device == "cpu" else (256, 256, 256)
    return (2 if device == "cpu" else 16, 256, 256)


class PredictStage(BlockwiseStage):
    """Checkpoint + raw dataset -> `<output>/probabilities` (uint8 0..255) and `<output>/segmentation` (uint8 0/1).

    `step` is the part of each pass's output that is kept (voxels per axis, multiples of the downsampling factor;
    default `default_step`); the pass input is the smallest valid network input whose output reaches it. `block`
    is the write block edge. `tta` runs each pass in its test-time variants (see `tta_variants`). Without
    `write_segmentation` only the probabilities are written (`prediction_stages` adds the clean-up).
    """

    task_name = "predict"

    checkpoint: str
    #: sha256 of the checkpoint file, filled in when the stage is created: a changed file is another run
    checkpoint_sha256: str = ""
    raw: str
    output: str
    roi_offset: VoxelOffsets | None = None
    roi_shape: Edges | None = None
    threshold: Threshold = 0.5
    block: Voxels = 256
    chunk: Voxels = DEFAULT_CHUNK
    step: Triple | None = None
    tta: TtaMode = "none"
    write_segmentation: bool = True
    #: `auto` is decided by each worker where it runs (on a cluster: the job's node, not the submitting machine)
    device: Literal["auto", "cpu", "cuda"] = "cpu"
    precision: Literal["auto", "fp32", "bf16"] = "fp32"
    #: passes (or test-time variants of passes) per forward; None: `default_batch` on the worker's device
    batch: int | None = Field(None, ge=1, le=4096)
    #: reader threads, and as many decoder and writer threads, per worker
    io_threads: int = Field(2, ge=1, le=64)
    strict: bool = False

    @field_validator("step", mode="before")
    @classmethod
    def _one_edge_for_all_axes(cls, value):
        return (value,) * 3 if isinstance(value, int) else value

    @model_validator(mode="before")
    @classmethod
    def _fill_digest(cls, data):
        if isinstance(data, dict) and not data.get("checkpoint_sha256") and Path(data.get("checkpoint", "")).is_file():
            data = {**data, "checkpoint_sha256": file_digest(data["checkpoint"])}
        return data

    def datasets(self) -> list[DatasetPath]:
        names = (PROBABILITIES, SEGMENTATION) if self.write_segmentation else (PROBABILITIES,)
        return [DatasetPath.parse(f"{self.output}/{name}") for name in names]

    def outputs(self) -> list[StageOutput]:
        return [DatasetOutput(path) for path in self.datasets()]

    def steps(self, network: NetworkConfig) -> Coordinate:
        """Output voxels each pass keeps per axis, checked against the network's downsampling factors."""
        gpu = self.device == "cuda" or (self.device == "auto" and torch.cuda.is_available())  # `auto` as decided here
        step = Coordinate(self.step or default_step(network, "cuda" if gpu else "cpu"))
        factors = network.total_factor()
        if any(s < f or s % f for s, f in zip(step, factors)):
            raise FieldError(
                f"{{step}} {' '.join(map(str, step))} must be positive multiples of {' '.join(map(str, factors))} "
                "(the network's downsampling factor along z, y, x)"
            )
        return step

    def pass_shapes(self, model) -> tuple[tuple[int, int, int], Coordinate, Coordinate]:
        """A pass's input shape, its output shape and the context per side (voxels) for `step`."""
        network = model.config
        step = self.steps(network)
        input_shape = tuple(network.input_edge_for(s, axis) for axis, s in enumerate(step))
        output_shape = Coordinate(network.output_shape(input_shape))
        return input_shape, output_shape, (Coordinate(input_shape) - output_shape) / 2

    def variants(self, model, raw: Volume) -> tuple:
        """The test-time variants of each pass (the x-y transpose where y and x agree in voxel size and edge)."""
        input_shape, _, _ = self.pass_shapes(model)
        transposable = raw.voxel_size[1] == raw.voxel_size[2] and input_shape[1] == input_shape[2]
        return tta_variants(model.config, self.tta, transposable)

    def check_normalization(self, raw: Volume, rule: NormalizationRule) -> None:
        """The raw data can be normalized by the model's rule (bit depths are of unsigned raw)."""
        if rule.accepts(raw.dtype):
            return
        fix = (
            "map it to uint8/uint16 with incasem-like rescale, as the model's training data was"
            if rule.mode == "bit_depth"
            else "predict an integer or float image"
        )
        raise UserError(f"{self.raw}: dtype {raw.dtype} does not fit {self.checkpoint}'s {rule.text()}; {fix}")

    def intensity_range(self, raw: Volume, rule: NormalizationRule) -> IntensityRange:
        """The normalization range recorded with the outputs when they were created (for outputs of older versions:
        the rule's range on `raw`, as it was then)."""
        recorded = dataset_meta(self.datasets()[0]).get("source", {}).get("raw_normalization")
        if recorded is None:
            return rule.range_of(raw)
        return IntensityRange(recorded["low"], recorded["high"], recorded["clip"])

    def check_preprocessing(self, state: dict) -> None:
        """The raw data should have had the preprocessing the model's training data had (a warning; --strict
        refuses)."""
        expected = state.get("preprocessing")
        actual = recorded_preprocessing(DatasetPath.parse(self.raw))
        if expected is None or actual == expected:
            return
        message = (
            f"{self.raw}: {_describe_preprocessing(actual)}, but {self.checkpoint} was trained on "
            f"{_describe_preprocessing(expected)}"
        )
        fix = "preprocess it with those parameters first" if expected else "predict the raw data instead"
        if self.strict:
            raise UserError(f"{message}; {fix} (or drop --strict)")
        logger.warning("%s; predictions may be poor (%s)", message, fix)

    def check_voxel_size(self, raw: Volume, state: dict) -> None:
        trained = state.get("voxel_size")
        if trained is None or to_world(trained) == raw.voxel_size:
            return
        message = (
            f"{self.raw}: voxel size {nm_text(raw.voxel_size)} differs from the {nm_text(to_world(trained))} the model "
            f"{self.checkpoint} was trained on"
        )
        if self.strict:
            raise UserError(f"{message}; resample the data (incasem-like downsample) or drop --strict")
        logger.warning("%s; predictions may be poor", message)

    def layout(self) -> BlockLayout:
        check_block(self.block, self.chunk)
        model, state = model_from_checkpoint(self.checkpoint)
        _, _, context = self.pass_shapes(model)
        raw = open_dataset(self.raw)
        self.check_normalization(raw, checkpoint_rule(state))
        self.check_voxel_size(raw, state)
        self.check_preprocessing(state)
        if DatasetPath.parse(self.raw) in self.datasets():
            raise UserError(f"{self.output}: the output must not contain the raw dataset; choose another name")
        return BlockLayout(
            total_write_roi=requested_roi(raw, self.raw, self.roi_offset, self.roi_shape),
            block_write_shape=Coordinate((self.block,) * 3) * raw.voxel_size,
            context=context * raw.voxel_size,
            voxel_size=raw.voxel_size,
            output_chunk_shape=Coordinate((self.chunk,) * 3) * raw.voxel_size,
        )

    def create_outputs(self, layout: BlockLayout) -> None:
        state = load_checkpoint(self.checkpoint)
        model_info = {key: state.get(key) for key in ("organelle", "iteration", "voxel_size", "network", "provenance")}
        model, _ = model_from_checkpoint(self.checkpoint)
        raw = open_dataset(self.raw)
        tta = {"mode": self.tta, "variants": len(self.variants(model, raw))}
        rule = checkpoint_rule(state)
        normalization = {**rule.model_dump(mode="json"), **rule.range_of(raw).record()}
        roi = layout.total_write_roi
        for path, kind in zip(self.datasets(), ("probabilities", "labels")):
            create_dataset(
                path,
                shape=roi.shape / layout.voxel_size,
                voxel_size=layout.voxel_size,
                offset=roi.offset,
                dtype=np.uint8,
                chunk_shape=(self.chunk,) * 3,
                attrs={
                    "kind": kind,
                    "source": {
                        "dataset": self.raw,
                        "predict": self.model_dump(),
                        "model": model_info,
                        "test_time_augmentation": tta,
                        "raw_normalization": normalization,
                    },
                },
            )

    def torch_device(self) -> torch.device:
        """This worker's device, `auto` decided here (where the worker runs)."""
        if select_device(self.device) == "cpu":
            return torch.device("cpu")
        worker_id = int(Context.from_env().get("worker_id", 0)) if "DAISY_CONTEXT" in os.environ else 0
        return torch.device("cuda", worker_id % torch.cuda.device_count())  # one worker per visible GPU

    def block_processor(self) -> Callable[[Block], None]:
        if file_digest(self.checkpoint) != self.checkpoint_sha256:
            raise UserError(f"{self.checkpoint} changed since this prediction started; rerun with --overwrite")
        model, state = model_from_checkpoint(self.checkpoint)
        device = self.torch_device()
        precision = default_precision(device.type) if self.precision == "auto" else self.precision
        raw = open_dataset(self.raw)
        variants = self.variants(model, raw)
        input_shape, output_shape, context = self.pass_shapes(model)
        batch = self.batch or default_batch(device.type, len(variants), input_shape)
        logger.info(
            "predicting on %s in %s, %d test-time variant(s) per pass, %d per forward",
            device, precision, len(variants), batch,
        )  # fmt: skip
        if device.type == "cuda":  # fp32 means fp32: no TF32 convolutions
            torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
        model = inference_model(model).to(device).to(memory_format=torch.channels_last_3d)
        predictor = Predictor(model, input_shape, device, precision == "bf16", variants, batch)
        datasets = [open_dataset(path, mode="r+", require_complete=False) for path in self.datasets()]
        grid = PassGrid(
            anchor=datasets[0].roi.begin,
            step=self.steps(model.config) * raw.voxel_size,
            output=output_shape * raw.voxel_size,
        )
        intensity = self.intensity_range(raw, checkpoint_rule(state))
        data_path = DataPath(raw, intensity, context, device, self.io_threads, self.block)
        cutoff = segmentation_cutoff(self.threshold) if self.write_segmentation else None

        def process(block: Block) -> None:
            rows = grid.rows(block.write_roi.intersect(datasets[0].roi))
            timer = Timer()
            slabs = SlabWriter(datasets, data_path, chunk_edge=self.chunk * raw.voxel_size[0], anchor=grid.anchor)
            results = predictor.outputs(data_path.regions([region for region, _ in rows], timer))
            for (region, keep), probabilities in zip(rows, results):
                inner = ((keep - region.offset) / raw.voxel_size).to_slices()
                values = quantized(probabilities[inner])
                slabs.add(keep, [values] if cutoff is None else [values, (values >= cutoff).to(torch.uint8)])
            timer.computed()
            slabs.wait(timer)
            logger.info("block %s: %s", block.block_id[1], timer.text())

        return process


def _describe_preprocessing(preprocessing: dict) -> str:
    if not preprocessing:
        return "data without CLAHE or rescaling"
    steps = [
        f"{step} ({', '.join(f'{key} {value}' for key, value in parameters.items())})"
        for step, parameters in preprocessing.items()
    ]
    return "data after " + " and ".join(steps)


def prediction_stages(stage: PredictStage, clean_up: CleanUp) -> list:
    """The stages that make `stage`'s outputs: the prediction alone, or with an active `clean_up` the prediction
    of the probabilities and then the `threshold` stage that writes the cleaned-up segmentation from them."""
    if not clean_up.active():
        return [stage]
    probabilities, segmentation = (f"{stage.output}/{name}" for name in (PROBABILITIES, SEGMENTATION))
    return [
        stage.model_copy(update={"write_segmentation": False}),
        ThresholdStage(
            input=probabilities,
            output=segmentation,
            threshold=stage.threshold,
            clean_up=clean_up,
            block=stage.block,
            chunk=stage.chunk,
        ),
    ]


class PassGrid:
    """Where passes start (every `step` from `anchor`) and which of their output voxels are kept (world units)."""

    def __init__(self, anchor: Coordinate, step: Coordinate, output: Coordinate):
        self.anchor, self.step, self.output = anchor, step, output

    def rows(self, write: Roi) -> list[tuple[Roi, Roi]]:
        """For each z-row of passes covering `write`: the output region the row's passes compute and the part of
        `write` they are the ones to provide."""
        first = (write.begin - self.anchor) / self.step
        last = (write.end - self.anchor - Coordinate((1, 1, 1))) / self.step
        rows = []
        for z in range(first[0], last[0] + 1):
            begin = self.anchor + self.step * Coordinate((z, first[1], first[2]))
            end = self.anchor + self.step * Coordinate((z, last[1], last[2])) + self.output
            row = Roi((begin[0], write.begin[1], write.begin[2]), (self.step[0], write.shape[1], write.shape[2]))
            rows.append((Roi(begin, end - begin), row.intersect(write)))
        return rows
