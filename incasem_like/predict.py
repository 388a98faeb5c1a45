"""Stage `predict`: a trained U-Net over a cell on daisy workers -> probabilities and segmentation (OME-Zarr).

Passes. The network runs on passes whose outputs tile the requested ROI on one grid anchored at the ROI's first
voxel: pass k contributes output voxels [k * step, (k + 1) * step) along each axis (`step` is a multiple of the
network's downsampling factor; the few output voxels a pass computes past it are dropped). A block runs the
passes that cover its write ROI, so every voxel comes from the same pass, fed the same input, whatever the block
size, the number of workers, their order or a resume: the outputs are bit-identical. Input beyond the data is
mirrored, so the whole ROI is predicted, borders included.

Storage. Probabilities as uint8 q = round(255 p), computed on the device; the segmentation is q / 255 > threshold,
the rule `threshold` applies later.

Overlap. Within a block a reader thread loads and normalizes the next z-row of passes while the network runs on
the current one, and a writer thread compresses and stores finished rows; a block is reported done only after
all its writes.
"""

import logging
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from daisy import Block, Context
from pydantic import model_validator

from incasem_like.blockwise.launchers import WORKER_THREADS_ENV
from incasem_like.blockwise.stage import BlockLayout, BlockwiseStage
from incasem_like.blockwise.volume_stage import requested_roi
from incasem_like.datasets import DEFAULT_CHUNK, DatasetPath, Volume, create_dataset, open_dataset
from incasem_like.errors import UserError
from incasem_like.geometry import Coordinate, Roi
from incasem_like.inference import normalize, predict_region, raw_with_context
from incasem_like.threshold import Threshold, segment
from incasem_like.training.checkpoints import file_digest, load_checkpoint, model_from_checkpoint

logger = logging.getLogger(__name__)

PROBABILITIES = "probabilities"
SEGMENTATION = "segmentation"
RAW_DTYPES = ("uint8", "uint16")


def select_device(name: str) -> str:
    """`auto` -> `cuda` where torch sees a GPU, else `cpu`; `cuda` without one is an error."""
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: torch sees no CUDA GPU; use --device cpu (or auto)")
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def default_precision(device: str) -> str:
    """bf16 on GPUs that support it; float32 on CPUs (bf16 is many times slower without AVX512-BF16/AMX)."""
    return "bf16" if device == "cuda" and torch.cuda.is_bf16_supported() else "fp32"


def recommended_threshold(checkpoint: str) -> float:
    """The threshold recorded with an exported model (the best of its validation sweep), else 0.5."""
    return float(load_checkpoint(checkpoint).get("threshold") or 0.5)


class PredictStage(BlockwiseStage):
    """Checkpoint + raw dataset -> `<output>/probabilities` (uint8 0..255) and `<output>/segmentation` (uint8 0/1).

    `step` is the edge of each pass's output that is kept (voxels, a multiple of the downsampling factor); the
    pass input is the smallest valid network input whose output reaches it. `block` is the write block edge.
    """

    task_name = "predict"

    checkpoint: str
    #: sha256 of the checkpoint file, filled in when the stage is created: a changed file is another run
    checkpoint_sha256: str = ""
    raw: str
    output: str
    roi_offset: tuple[int, int, int] | None = None
    roi_shape: tuple[int, int, int] | None = None
    threshold: Threshold = 0.5
    block: int = 256
    chunk: int = DEFAULT_CHUNK
    step: int = 128
    #: `auto` is decided by each worker where it runs (on a cluster: the job's node, not the submitting machine)
    device: Literal["auto", "cpu", "cuda"] = "cpu"
    precision: Literal["auto", "fp32", "bf16"] = "fp32"
    strict: bool = False

    @model_validator(mode="before")
    @classmethod
    def _fill_digest(cls, data):
        if isinstance(data, dict) and not data.get("checkpoint_sha256") and Path(data.get("checkpoint", "")).is_file():
            data = {**data, "checkpoint_sha256": file_digest(data["checkpoint"])}
        return data

    def output_paths(self) -> list[DatasetPath]:
        return [DatasetPath.parse(f"{self.output}/{name}") for name in (PROBABILITIES, SEGMENTATION)]

    def pass_shapes(self, model) -> tuple[tuple[int, int, int], Coordinate, Coordinate]:
        """A pass's input shape, its output shape and the context per side (voxels) for `step`."""
        factor = 2**model.config.downsamplings
        if self.step < factor or self.step % factor:
            raise UserError(
                f"--step {self.step} must be a positive multiple of {factor} (the network's downsampling factor)"
            )
        input_shape = (model.config.input_edge_for(self.step),) * 3
        output_shape = Coordinate(model.config.output_shape(input_shape))
        return input_shape, output_shape, (Coordinate(input_shape) - output_shape) / 2

    def open_raw(self) -> Volume:
        raw = open_dataset(self.raw)
        if raw.dtype.name not in RAW_DTYPES:
            raise UserError(
                f"{self.raw}: dtype {raw.dtype} cannot be predicted (needs uint8 or uint16 raw, as in training)"
            )
        return raw

    def check_voxel_size(self, raw: Volume, state: dict) -> None:
        trained = state.get("voxel_size")
        if trained is None or Coordinate(trained) == raw.voxel_size:
            return
        message = (
            f"{self.raw}: voxel size {tuple(raw.voxel_size)} nm differs from the {tuple(trained)} nm the model "
            f"{self.checkpoint} was trained on"
        )
        if self.strict:
            raise UserError(f"{message}; resample the data (incasem-like downsample) or drop --strict")
        logger.warning("%s; predictions may be poor", message)

    def layout(self) -> BlockLayout:
        if self.block < 1 or self.chunk < 1 or self.block % self.chunk:
            raise UserError(f"--block {self.block} must be a positive multiple of --chunk {self.chunk}")
        model, state = model_from_checkpoint(self.checkpoint)
        _, _, context = self.pass_shapes(model)
        raw = self.open_raw()
        self.check_voxel_size(raw, state)
        if DatasetPath.parse(self.raw) in self.output_paths():
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
        roi = layout.total_write_roi
        for path, kind in zip(self.output_paths(), ("probabilities", "labels")):
            create_dataset(
                path,
                shape=roi.shape / layout.voxel_size,
                voxel_size=layout.voxel_size,
                offset=roi.offset,
                dtype=np.uint8,
                chunk_shape=(self.chunk,) * 3,
                attrs={
                    "kind": kind,
                    "source": {"dataset": self.raw, "predict": self.model_dump(), "model": model_info},
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
        torch.set_num_threads(int(os.environ.get(WORKER_THREADS_ENV, torch.get_num_threads())))
        model, _ = model_from_checkpoint(self.checkpoint)
        device = self.torch_device()
        precision = default_precision(device.type) if self.precision == "auto" else self.precision
        bf16 = precision == "bf16"
        logger.info("predicting on %s in %s", device, precision)
        model = model.to(device)
        if bf16 and device.type == "cuda":
            model = model.to(memory_format=torch.channels_last_3d)
        input_shape, output_shape, context = self.pass_shapes(model)
        raw = self.open_raw()
        probabilities, segmentation = (
            open_dataset(path, mode="r+", require_complete=False) for path in self.output_paths()
        )
        grid = PassGrid(
            anchor=probabilities.roi.begin,
            step=Coordinate((self.step,) * 3) * raw.voxel_size,
            output=output_shape * raw.voxel_size,
        )
        reader, writer = ThreadPoolExecutor(1), ThreadPoolExecutor(1)

        def read(region: Roi) -> np.ndarray:
            return normalize(raw_with_context(raw, region, context))

        def store(roi: Roi, result: np.ndarray) -> None:
            probabilities[roi] = result
            segmentation[roi] = segment(result, self.threshold)

        def process(block: Block) -> None:
            rows = grid.rows(block.write_roi.intersect(probabilities.roi))
            waited = {"read": 0.0, "compute": 0.0, "write": 0.0}
            pending = reader.submit(read, rows[0][0])
            writes = []
            for index, (region, keep) in enumerate(rows):
                start = time.perf_counter()
                data = pending.result()
                if index + 1 < len(rows):
                    pending = reader.submit(read, rows[index + 1][0])
                computing = time.perf_counter()
                result = predict_region(model, data, input_shape, device, bf16, quantize=True)
                inner = (keep - region.offset) / raw.voxel_size
                writes.append(writer.submit(store, keep, result[inner.to_slices()]))
                waited["read"] += computing - start
                waited["compute"] += time.perf_counter() - computing
            start = time.perf_counter()
            for write in writes:
                write.result()
            waited["write"] = time.perf_counter() - start
            logger.info(
                "block %s: waited for reads %.2f s, network %.2f s, waited for writes %.2f s",
                block.block_id[1],
                *waited.values(),
            )

        return process


class PassGrid:
    """Where passes start (every `step` from `anchor`) and which of their output voxels are kept (all in nm)."""

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
