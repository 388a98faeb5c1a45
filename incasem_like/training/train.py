"""The training loop of `train` and `finetune`: batches from the gunpowder graph, Adam, the configured loss,
atomic checkpoints, validation on held-out ROIs, TensorBoard scalars, zarr snapshots and a JSON summary.

Validation reports the field's metric (every voxel of the ROI counts: foreground F1 = Dice, IoU, precision,
recall) and ASEM's (voxels in the metric exclusion zone and outside the cell mask do not count), each at the
configured threshold and at the best threshold of a sweep. Checkpoints and thresholds are chosen by the field's
metric on these ROIs, so a figure reported for them is optimistic: report on data no choice has seen.
"""

import json
import logging
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from tqdm import tqdm

from incasem_like.blockwise.lock import LOCK, RunLock, remove_all_but_lock
from incasem_like.core.errors import UserError
from incasem_like.core.files import write_atomically
from incasem_like.core.geometry import Coordinate, to_nm
from incasem_like.nn.checkpoints import checkpoints, load_checkpoint, save_checkpoint
from incasem_like.nn.inference import (
    autocast,
    predict_region,
    probabilities,
    raw_with_context,
    select_device,
)
from incasem_like.nn.model import ReconstructionDecoder, UNet3D, inference_model, reconstruction_target
from incasem_like.nn.normalization import IntensityRange, checkpoint_rule, normalize
from incasem_like.ops.metrics import EXCLUSION_ZONE, overlap_scores, threshold_counts, value_histograms
from incasem_like.store.datasets import (
    RUN_DIR,
    DatasetPath,
    create_dataset,
    recorded_preprocessing,
    update_dataset_meta,
)
from incasem_like.training.config import CellVolumes, TrainConfig, normalization_rule, open_cells, open_unlabelled
from incasem_like.training.loss import loss_weights, training_loss
from incasem_like.training.pipeline import (
    CALIBRATION,
    BatchSource,
    batch_stream,
    calibration_config,
    cell_probabilities,
    check_trainable,
    normalization_ranges,
)

SUMMARY = "summary.json"
HISTORY = "history.json"

logger = logging.getLogger(__name__)


def _write_json(path: Path, content) -> None:
    """Replace a JSON file atomically: readers (TensorBoard users, scripts) never see half of it."""
    write_atomically(path, json.dumps(content, indent=1))


def uses_bf16(device: torch.device) -> bool:
    """bf16 autocast + channels_last_3d on GPUs that support bf16; float32 on CPU (training accuracy first)."""
    return device.type == "cuda" and torch.cuda.is_bf16_supported()


@dataclass
class ValidationCell:
    """A validation ROI held in memory: raw with context, labels, the voxels that count for ASEM's metric (inside
    the cell mask, outside the exclusion zone) and, for sparse ground truth, the annotated voxels, the only ones
    either metric counts (for the field's metric every annotated voxel counts)."""

    key: str
    raw: np.ndarray
    labels: np.ndarray
    counted: np.ndarray
    #: the range normalized to -1 .. 1, by the run's rule
    intensity: IntensityRange
    #: annotated voxels of sparse ground truth (None: all are)
    annotated: np.ndarray | None = None

    @classmethod
    def load(cls, cell: CellVolumes, context, intensity: IntensityRange) -> "ValidationCell":
        values = cell.volumes["labels"][cell.roi]
        annotated = None
        if cell.cell.sparse():
            mask = cell.volumes["annotated"][cell.roi] if "annotated" in cell.volumes else None
            annotated = cell.annotation(cell.roi, values, mask)
        labels = values > 0 if annotated is None else (values > 0) & annotated
        counted = np.ones(labels.shape, dtype=bool) if annotated is None else annotated.copy()
        for role in ("mask", "metric_mask"):
            if role in cell.volumes:
                counted &= cell.volumes[role][cell.roi] > 0
        raw = cell.volumes["raw"]
        return cls(cell.key, raw_with_context(raw, cell.roi, context), labels, counted, intensity, annotated)


#: thresholds of the validation sweep (the best one is reported beside the F1 at the configured threshold)
SWEEP = tuple(round(0.05 * step, 2) for step in range(1, 20))
SWEPT = ("best_threshold", "best_threshold_f1")
#: the keys of a validation's scores, the field's metric at the top level and ASEM's under EXCLUSION_ZONE
SCORES = ("precision", "recall", "f1", "iou", *SWEPT)


def metric_summary(histograms: np.ndarray, threshold: float) -> dict:
    """Counts and precision/recall/F1/IoU at `threshold`, and the sweep's best threshold with its F1."""
    counts = threshold_counts(histograms, threshold)
    swept = {t: overlap_scores(threshold_counts(histograms, t))["f1"] for t in SWEEP}
    best = max(SWEEP, key=lambda t: (swept[t], -t))
    scores = {key: value for key, value in overlap_scores(counts).items() if key != "dice"}  # Dice = F1
    return {**counts, **scores, "best_threshold": best, "best_threshold_f1": swept[best]}


def validate(
    model: UNet3D, cells: list[ValidationCell], device: torch.device, config: TrainConfig, input_shape
) -> dict:
    """The configured loss, and the field's and ASEM's scores at the configured threshold and swept
    (`metric_summary`) over all validation ROIs (and per ROI); passes of `input_shape` through the model as
    `predict` runs it (batch norm folded). Probabilities are quantized and thresholded as `predict` stores and
    thresholds them (uint8 q, foreground q > 255 t)."""
    threshold, loss = config.threshold, config.loss
    per_cell, losses, weights_total = {}, 0.0, 0
    histograms = {"all": np.zeros((2, 256), np.int64), EXCLUSION_ZONE: np.zeros((2, 256), np.int64)}
    network = inference_model(model)
    for cell in cells:
        logits = predict_region(network, normalize(cell.raw, cell.intensity), input_shape, device, uses_bf16(device))
        weights = loss_weights(loss, cell.labels, cell.counted, config.max_class_ratio)
        value = float(training_loss(loss, *(torch.from_numpy(a)[None, None] for a in (logits, cell.labels, weights))))
        quantized = np.round(probabilities(logits) * 255).astype(np.uint8)
        cell_histograms = {
            "all": value_histograms(quantized, cell.labels, cell.annotated),
            EXCLUSION_ZONE: value_histograms(quantized, cell.labels, cell.counted),
        }
        for kind, counts in cell_histograms.items():
            histograms[kind] += counts
        per_cell[cell.key] = {
            "loss": value,
            **metric_summary(cell_histograms["all"], threshold),
            EXCLUSION_ZONE: metric_summary(cell_histograms[EXCLUSION_ZONE], threshold),
        }
        counted = int(cell.counted.sum())
        losses += value * counted
        weights_total += counted
    return {
        "loss": losses / max(weights_total, 1),
        **metric_summary(histograms["all"], threshold),
        EXCLUSION_ZONE: metric_summary(histograms[EXCLUSION_ZONE], threshold),
        "cells": per_cell,
    }


def write_snapshot(run_dir: Path, iteration: int, batch: dict, logits: np.ndarray, voxel_size) -> None:
    """Input, labels, weights and prediction of one batch as zarr datasets, placed where they were sampled. A
    snapshot of the same iteration is replaced: a run killed after it, before the next checkpoint, redoes it."""
    container = run_dir / "snapshots.zarr"
    shutil.rmtree(container / f"iteration_{iteration:08d}", ignore_errors=True)
    arrays = {  # the batch's first sample
        "raw": (batch["raw"][0], batch["raw_offset"]),
        "labels": (batch["labels"][0], batch["labels_offset"]),
        "weights": (batch["weights"][0], batch["labels_offset"]),
        "prediction": (probabilities(logits[0]), batch["labels_offset"]),
    }
    for name, (data, offset) in arrays.items():
        path = DatasetPath(container, f"iteration_{iteration:08d}/{name}")
        volume = create_dataset(path, data.shape, voxel_size, offset, data.dtype, (64, 64, 64))
        volume.data[...] = data
        update_dataset_meta(path, complete=True, kind="labels" if name == "labels" else "image")


class Run:
    """One training or fine-tuning run in `config.run_dir`."""

    def __init__(self, config: TrainConfig):
        self.config = config
        self.dir = Path(config.run_dir)
        self.device = torch.device(select_device(config.device, "device:"))
        self.bf16 = uses_bf16(self.device)
        self.training, validation = open_cells(config)
        check_trainable(config, self.training)
        unlabelled = open_unlabelled(config, self.training[0])
        self.normalization = normalization_rule(config, self.training + validation)
        #: each training cell's and unlabelled region's normalization range, by key (percentiles: read once here,
        #: not in every data worker)
        self.ranges = normalization_ranges(self.normalization, self.training + unlabelled)
        context = Coordinate(config.network.context())
        self.validation = [
            ValidationCell.load(cell, context, self.normalization.range_of(cell.volumes["raw"])) for cell in validation
        ]
        for cell in self.validation:
            if not cell.labels[cell.counted].any():
                raise UserError(
                    f"validation ROI {cell.key}: its labels hold no foreground where voxels count, so its F1 would "
                    "read 1.000 for predicting nothing; choose a validation ROI that shows the organelle"
                )
        self.validation_input_shape = config.validation_input_shape or config.network.input_shape
        config.network.output_shape(self.validation_input_shape)  # UserError naming valid edges if it does not fit
        torch.manual_seed(config.seed)
        self.model = UNet3D(config.network).to(self.device)
        #: semi-supervised training's second decoder (`ReconstructionDecoder`), kept apart from the model
        self.reconstruction = ReconstructionDecoder(config.network).to(self.device) if config.semi_supervised else None
        if self.bf16:
            self.model = self.model.to(memory_format=torch.channels_last_3d)
        parameters = [*self.model.parameters(), *(self.reconstruction.parameters() if self.reconstruction else [])]
        self.optimizer = torch.optim.Adam(
            parameters, lr=config.optimizer.learning_rate, weight_decay=config.optimizer.weight_decay
        )
        self.history: list[dict] = []
        #: training seconds of the run's earlier invocations (resumed from a checkpoint that records them)
        self.previous_seconds = 0.0
        #: batches for recomputing batch-norm statistics before a checkpoint (made when first needed)
        self.calibration_source: BatchSource | None = None

    # --- starting points ----------------------------------------------------------------------------------------
    @property
    def lock_path(self) -> Path:
        """The lock held while a process trains in the run directory (one at a time)."""
        return self.dir / RUN_DIR / LOCK

    def prepare_directory(self, resume: bool, overwrite: bool) -> int:
        """Reuse or (re)fill the run directory, which holds this run's lock; returns the iteration to continue
        from."""
        existing = checkpoints(self.dir)
        if resume and not existing:  # stopped before its first checkpoint: nothing to continue, so it starts over
            logger.warning("%s: no checkpoint yet, so the run starts from iteration 0", self.dir)
            resume, overwrite = False, True
        if resume:
            iteration, path = list(existing.items())[-1]
            state = load_checkpoint(path, self.config.network)
            self.model.load_state_dict(state["model"])
            if self.reconstruction is not None:
                if state.get("reconstruction") is None:
                    raise UserError(
                        f"{path}: holds no reconstruction decoder, but the config asks for semi_supervised; start "
                        "the run afresh with --overwrite"
                    )
                self.reconstruction.load_state_dict(state["reconstruction"])
            self.load_optimizer(
                state, path, "restore the run's semi_supervised setting or start afresh with --overwrite"
            )
            self.previous_seconds = float(state.get("run_seconds", 0.0))
            budget = self.config.time_budget_minutes
            if budget and self.previous_seconds >= budget * 60:
                raise UserError(
                    f"{self.dir}: the run has spent its time budget ({self.previous_seconds / 60:.1f} of "
                    f"time_budget_minutes {budget:g}); raise time_budget_minutes to continue it"
                )
            history = self.dir / HISTORY
            self.history = (
                [h for h in json.loads(history.read_text()) if h["iteration"] <= iteration] if history.exists() else []
            )
            return iteration
        if any(entry.name != RUN_DIR for entry in self.dir.iterdir()):
            if not overwrite:
                raise UserError(
                    f"{self.dir} already holds a run; pass --resume to continue it or --overwrite to start afresh"
                )
            remove_all_but_lock(self.dir, self.lock_path)
        (self.dir / "config.yaml").write_text(yaml.safe_dump(self.config.model_dump(mode="json"), sort_keys=False))
        return 0

    def load_weights(self, checkpoint: str, with_optimizer: bool) -> None:
        state = load_checkpoint(checkpoint, self.config.network)
        self.model.load_state_dict(state["model"])
        if with_optimizer:
            if state["optimizer"] is None:
                raise UserError(f"{checkpoint}: holds no optimizer state; fine-tune without --with-optimizer")
            self.load_optimizer(state, checkpoint, "fine-tune without --with-optimizer")

    def load_optimizer(self, state: dict, checkpoint, fix: str) -> None:
        """The optimizer state of `checkpoint`, which must be of the same parameters (a reconstruction decoder's
        included or not)."""
        try:
            self.optimizer.load_state_dict(state["optimizer"])
        except ValueError:
            raise UserError(
                f"{checkpoint}: its optimizer state belongs to other parameters than this run's (with or without "
                f"semi_supervised's reconstruction decoder); {fix}"
            ) from None

    # --- the loop -----------------------------------------------------------------------------------------------
    def run(self, start: int, progress: bool = True, extra_summary: dict | None = None) -> dict:
        config = self.config
        from torch.utils.tensorboard import SummaryWriter

        started = time.perf_counter()
        deadline = started + config.max_minutes * 60 if config.max_minutes else math.inf
        if config.time_budget_minutes:
            deadline = min(deadline, started + config.time_budget_minutes * 60 - self.previous_seconds)
        writer = SummaryWriter(str(self.dir / "tensorboard"), purge_step=start + 1 if start else None)
        validation_seconds = 0.0  # the last validation's duration: the time a final one needs
        if self.validation and start == 0:
            validation_seconds = self.record_validation(0, writer)
        probabilities = cell_probabilities(self.training)
        stream = batch_stream(config, start + 1, config.iterations + 1, probabilities, self.ranges)
        data_seconds = compute_seconds = 0.0
        bar = tqdm(total=config.iterations, initial=start, disable=not progress, unit="it", dynamic_ncols=True)
        waited = time.perf_counter()
        iteration = start
        try:
            for batch in stream:
                iteration = batch["iteration"]
                ready = time.perf_counter()
                data_seconds += ready - waited
                learning_rate = config.optimizer.learning_rate_at(iteration, config.iterations)
                losses = self.step(batch, learning_rate, iteration)
                compute_seconds += time.perf_counter() - ready
                for name, tag in (("loss", "loss/train"), ("reconstruction_loss", "loss/reconstruction")):
                    if name in losses:
                        writer.add_scalar(tag, losses[name], iteration)
                writer.add_scalar("learning_rate", learning_rate, iteration)
                bar.update()
                bar.set_postfix({name: f"{value:.4f}" for name, value in losses.items() if name != "logits"})
                if iteration % config.snapshot_every == 0 and "logits" in losses:
                    write_snapshot(self.dir, iteration, batch, losses["logits"], self.training[0].voxel_size)
                step_seconds = time.perf_counter() - waited
                out_of_time = time.perf_counter() + step_seconds + validation_seconds > deadline
                last = iteration == config.iterations or out_of_time
                validate_now = bool(self.validation) and (iteration % config.validate_every == 0 or last)
                if validate_now or last or iteration % config.checkpoint_every == 0:  # every validated state is saved
                    self.check_weights(learning_rate)
                    self.calibrate_batch_norm(iteration)
                    save_checkpoint(
                        self.dir,
                        self.model,
                        self.optimizer,
                        iteration,
                        config.organelle,
                        to_nm(self.training[0].voxel_size),
                        run_seconds=round(self.previous_seconds + time.perf_counter() - started, 1),
                        preprocessing=recorded_preprocessing(self.training[0].cell.path(self.training[0].cell.raw)),
                        raw_normalization=self.normalization.model_dump(mode="json"),
                        **({"reconstruction": self.reconstruction.state_dict()} if self.reconstruction else {}),
                    )
                if validate_now:
                    validation_seconds = self.record_validation(iteration, writer)
                if last:
                    break
                waited = time.perf_counter()
        finally:  # a stop on divergence or Ctrl-C also ends the data workers
            stream.close()
            if self.calibration_source is not None:
                self.calibration_source.close()
                self.calibration_source = None
        bar.close()
        writer.close()
        timing = {
            "iterations": iteration - start,
            "stopped_at_time_limit": iteration < config.iterations,
            "data_wait_seconds": round(data_seconds, 3),
            "compute_seconds": round(compute_seconds, 3),
            "wall_seconds": round(time.perf_counter() - started, 1),  # validation and checkpoints included
            "run_seconds": round(self.previous_seconds + time.perf_counter() - started, 1),  # all invocations
        }
        return self.write_summary(timing, extra_summary or {})

    def step(self, batch: dict, learning_rate: float, iteration: int) -> dict[str, Any]:
        """One optimizer step on `batch`: the segmentation loss of its labelled samples and, with semi-supervised
        training, the weighted reconstruction loss of every sample (`batch_kinds`). Returns the losses and the
        logits of the labelled samples (for the snapshot)."""
        self.model.train()
        if self.reconstruction is not None:
            self.reconstruction.train()
        for group in self.optimizer.param_groups:
            group["lr"] = learning_rate
        terms: list[torch.Tensor] = []
        result: dict[str, Any] = {}
        if "raw" in batch:
            raw, labels, weights = (self.tensor(batch[key]) for key in ("raw", "labels", "weights"))
            with autocast(self.device, self.bf16):
                features, skips = self.model.encode(raw)
                logits = self.model.decode(features, skips)
            loss = training_loss(self.config.loss, logits, labels, weights)
            terms.append(loss)
            result |= {"loss": float(loss.detach()), "logits": logits.detach().float().cpu().numpy()[:, 0]}
            if self.reconstruction is not None:
                terms.append(self.reconstruction_loss(features, raw))
        if "unlabelled" in batch:
            raw = self.tensor(batch["unlabelled"])
            with autocast(self.device, self.bf16):
                features, _ = self.model.encode(raw)
            terms.append(self.reconstruction_loss(features, raw))
        if self.reconstruction is not None:
            result["reconstruction_loss"] = float(terms[-1].detach())
        total = sum(terms[1:], terms[0])
        value = float(total.detach())
        if not math.isfinite(value):
            raise self.diverged(f"at iteration {iteration}: the loss is {value}", learning_rate)
        self.optimizer.zero_grad(set_to_none=True)
        total.backward()
        self.optimizer.step()
        return result

    def tensor(self, array: np.ndarray) -> torch.Tensor:
        """A batch array (N, z, y, x) as a float (N, 1, z, y, x) tensor on the device (channels-last with bf16)."""
        tensor = torch.from_numpy(np.ascontiguousarray(array))[:, None]
        return tensor.to(self.device, memory_format=torch.channels_last_3d) if self.bf16 else tensor.to(self.device)

    def reconstruction_loss(self, features: torch.Tensor, raw: torch.Tensor) -> torch.Tensor:
        """The weighted Huber loss of the reconstruction decoder's image against the centre of the input."""
        assert self.reconstruction is not None and self.config.semi_supervised is not None
        with autocast(self.device, self.bf16):
            image = self.reconstruction(features)
        target = reconstruction_target(raw, image)
        return self.config.semi_supervised.weight * torch.nn.functional.smooth_l1_loss(image.float(), target.float())

    def diverged(self, what: str, learning_rate: float) -> UserError:
        """Training cannot go on: the loss or a weight is not finite (e.g. a learning rate far too high)."""
        saved = checkpoints(self.dir)
        resume = f"--resume from iteration {max(saved)}, or " if saved else ""
        return UserError(
            f"{self.dir}: training diverged {what} (learning rate {learning_rate:g}); lower "
            f"optimizer.learning_rate and rerun with {resume}--overwrite"
        )

    def check_weights(self, learning_rate: float) -> None:
        """No checkpoint is saved with an infinite or NaN weight."""
        for name, parameter in self.model.named_parameters():
            if not torch.isfinite(parameter).all():
                raise self.diverged(f"before a checkpoint: weight {name} is not finite", learning_rate)

    def calibrate_batch_norm(self, iteration: int) -> None:
        """Batch-norm statistics of the current weights over `batch_norm_calibration` batches of unaugmented
        training data (seeded by the iteration, so a resumed run recomputes them alike): the statistics of the
        images prediction sees, for the weights being saved. Training itself uses each batch's own statistics,
        so only later running averages start from these."""
        norms = [m for m in self.model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
        if not norms or not self.config.batch_norm_calibration:
            return
        if self.calibration_source is None:
            self.calibration_source = BatchSource(calibration_config(self.config), ranges=self.ranges)
        momenta = [norm.momentum for norm in norms]
        for norm in norms:
            norm.reset_running_stats()
            norm.momentum = None  # a cumulative average over the calibration batches
        self.model.train()
        with torch.no_grad(), autocast(self.device, self.bf16):
            for index in range(self.config.batch_norm_calibration):
                raw = self.calibration_source.batch(iteration * self.config.batch_norm_calibration + index, CALIBRATION)
                tensor = torch.from_numpy(raw["raw"])[:, None].to(self.device)
                self.model(tensor.contiguous(memory_format=torch.channels_last_3d) if self.bf16 else tensor)
        for norm, momentum in zip(norms, momenta):
            norm.momentum = momentum

    def record_validation(self, iteration: int, writer) -> float:
        """Validate, log and record the result; returns the seconds it took."""
        started = time.perf_counter()
        result = validate(self.model, self.validation, self.device, self.config, self.validation_input_shape)
        writer.add_scalar("validation/loss", result["loss"], iteration)
        for name in SCORES:
            writer.add_scalar(f"validation/{name}", result[name], iteration)
            writer.add_scalar(f"validation_exclusion_zone/{name}", result[EXCLUSION_ZONE][name], iteration)
        writer.flush()
        self.history = [h for h in self.history if h["iteration"] != iteration] + [{"iteration": iteration, **result}]
        _write_json(self.dir / HISTORY, self.history)
        return time.perf_counter() - started

    def write_summary(self, timing: dict, extra: dict) -> dict:
        saved = checkpoints(self.dir)
        scored = [h for h in self.history if h["iteration"] in saved]
        best = max(scored, key=lambda h: (h["f1"], -h["iteration"]), default=None)
        swept_best = max(
            (h for h in scored if "best_threshold_f1" in h),
            key=lambda h: (h["best_threshold_f1"], -h["iteration"]),
            default=None,
        )
        summary = {
            "organelle": self.config.organelle,
            "run_dir": str(self.dir),
            "device": str(self.device)
            + (f" ({torch.cuda.get_device_name(self.device)})" if self.device.type == "cuda" else ""),
            "bf16": self.bf16,
            "network": self.config.network.model_dump(mode="json"),
            "raw_normalization": {
                **self.normalization.model_dump(mode="json"),
                "ranges": {key: [r.low, r.high] for key, r in self.ranges.items()},
            },
            "parameters": sum(p.numel() for p in self.model.parameters()),
            "iterations": max(saved, default=0),
            "checkpoints": {str(i): str(p) for i, p in saved.items()},
            "threshold": self.config.threshold,
            "metrics": "top level: every voxel of the validation ROIs counts (the field's metric); exclusion_zone: "
            "voxels in the metric exclusion zone or outside the cell mask do not count (ASEM's); checkpoints and "
            "thresholds are chosen on these ROIs by the field's metric",
            "validation": [
                {
                    **{key: h.get(key) for key in ("iteration", "loss", *SCORES)},
                    EXCLUSION_ZONE: {key: h.get(EXCLUSION_ZONE, {}).get(key) for key in SCORES},
                }
                for h in self.history
            ],
            "best": {
                "iteration": best["iteration"],
                "f1": best["f1"],
                "iou": best.get("iou"),
                "exclusion_zone_f1": best.get(EXCLUSION_ZONE, {}).get("f1"),
                "checkpoint": str(saved[best["iteration"]]),
            }
            if best
            else None,
            "best_at_swept_threshold": {
                "iteration": swept_best["iteration"],
                "threshold": swept_best["best_threshold"],
                "f1": swept_best["best_threshold_f1"],
                "checkpoint": str(saved[swept_best["iteration"]]),
            }
            if swept_best
            else None,
            "timing": {
                **timing,
                "iterations_per_second": round(
                    timing["iterations"] / max(timing["data_wait_seconds"] + timing["compute_seconds"], 1e-9), 4
                ),
                "data_wait_fraction": round(
                    timing["data_wait_seconds"] / max(timing["data_wait_seconds"] + timing["compute_seconds"], 1e-9), 4
                ),
            },
            **extra,
        }
        _write_json(self.dir / SUMMARY, summary)
        return summary


def train(config: TrainConfig, resume: bool = False, overwrite: bool = False, progress: bool = True) -> dict:
    run = Run(config)
    with RunLock(run.lock_path, str(run.dir)):
        start = run.prepare_directory(resume, overwrite)
        if start >= config.iterations:
            raise UserError(f"{run.dir}: already trained to iteration {start}; raise iterations to continue")
        return run.run(start, progress)


def finetune(
    config: TrainConfig, checkpoint: str, with_optimizer: bool = False, overwrite: bool = False, progress: bool = True
) -> dict:
    """Train from `checkpoint`'s weights on the config's cells, raw normalized by the checkpoint's rule; F1 on the
    validation ROIs before and after."""
    if not config.validation:
        raise UserError("validation: fine-tuning needs held-out ground truth of the new cell; add a validation entry")
    rule = checkpoint_rule(load_checkpoint(checkpoint))
    if config.raw_normalization not in (None, rule):
        raise UserError(
            f"raw_normalization: {config.raw_normalization.text()} differs from the {rule.text()} {checkpoint} was "
            "trained with; remove raw_normalization from the config (fine-tuning keeps the model's)"
        )
    run = Run(config.model_copy(update={"raw_normalization": rule}))
    run.load_weights(checkpoint, with_optimizer)
    with RunLock(run.lock_path, str(run.dir)):
        run.prepare_directory(resume=False, overwrite=overwrite)
        summary = run.run(0, progress, {"finetuned_from": str(checkpoint)})
        before, after = run.history[0], run.history[-1]
        summary["finetune"] = {
            "f1_before": before["f1"],
            "f1_after": after["f1"],
            "best_iteration": summary["best"]["iteration"] if summary["best"] else None,
            "best_f1": summary["best"]["f1"] if summary["best"] else None,
        }
        _write_json(run.dir / SUMMARY, summary)
    return summary
