"""Every command that can be a pipeline stage, as a step (`incasem_like.workflow.step`), and their union.

A command that runs one blockwise stage derives its step from the stage's class, so the step's fields, defaults
and validators are the stage's (`StageStep`); the others hold the command's fields and compose stages, training,
evaluation or review when they run. `STEP_TYPES` maps each `command` to its step; `parse_step` validates a
mapping (a pipeline file's stage) into one.
"""

import logging
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

import numpy as np
import torch
from pydantic import Field, TypeAdapter, field_validator, model_validator

from incasem_like.blockwise.launchers import LocalLauncher
from incasem_like.blockwise.outputs import DatasetOutput
from incasem_like.blockwise.runner import check_writable, refuse_if_running
from incasem_like.core.bounds import Count, Edges, VoxelCount, VoxelOffsets, Voxels
from incasem_like.core.errors import FieldError, UserError
from incasem_like.core.files import file_digest
from incasem_like.core.geometry import nm_text
from incasem_like.nn.checkpoints import load_checkpoint, model_from_checkpoint, resolve_checkpoint
from incasem_like.nn.export import ExportFormat
from incasem_like.nn.inference import TtaMode, select_device
from incasem_like.nn.model import Triple
from incasem_like.nn.models import checkpoint_location
from incasem_like.nn.packages import FOREIGN_KEY
from incasem_like.ops.morphology import DEFAULT_MAX_SPAN
from incasem_like.ops.surfaces import MAX_ERROR, SMOOTH_ITERATIONS, Iterations, Reduction, SimplifyError
from incasem_like.stages.clahe import ClaheStage
from incasem_like.stages.convert import ConvertStage, label_mode_for
from incasem_like.stages.downsample import DownsampleStage, Kind, resolve_kind
from incasem_like.stages.interpolate import InterpolateLabelsStage
from incasem_like.stages.labels import (
    CleanLabelsStage,
    DilateLabelsStage,
    MetricMaskStage,
    known_organelles,
    load_organelle,
)
from incasem_like.stages.mask import MaskStage
from incasem_like.stages.mesh import DEFAULT_FORMATS, SIMPLIFY, Format, MeshStage, make_meshes
from incasem_like.stages.objects import DEFAULT_BLOCK as OBJECTS_BLOCK
from incasem_like.stages.objects import DEFAULT_MAX_DISTANCE, DEFAULT_REACH, find_objects
from incasem_like.stages.objects import Distance as ObjectsDistance
from incasem_like.stages.predict import (
    PROBABILITIES,
    SEGMENTATION,
    PredictStage,
    default_precision,
    prediction_stages,
    recommended_settings,
)
from incasem_like.stages.rescale import RescaleStage
from incasem_like.stages.threshold import CleanUp, Threshold, ThresholdStage
from incasem_like.store.datasets import DEFAULT_CHUNK, DatasetPath, open_dataset, value_max
from incasem_like.workflow.step import Execution, Output, StageStep, Step, run_and_report

logger = logging.getLogger(__name__)


# --- one blockwise stage each ------------------------------------------------------------------------------------
class ConvertStep(StageStep, ConvertStage):
    """`label_mode: labels` keeps integer labels and turns a 0/255 mask into 0/1 (decided from the slices)."""

    command: Literal["convert"] = "convert"
    stage_class = ConvertStage

    def reads(self) -> list[str]:
        return [self.source]

    def run(self, execution: Execution) -> None:
        stage = self.stage()
        if self.label_mode == "labels":
            assert isinstance(stage, ConvertStage)
            stage = stage.model_copy(update={"label_mode": label_mode_for(stage.stack)})
        run_and_report(stage, execution)


class ClaheStep(StageStep, ClaheStage):
    command: Literal["clahe"] = "clahe"
    stage_class = ClaheStage

    def reads(self) -> list[str]:
        return [self.input]


class RescaleStep(StageStep, RescaleStage):
    command: Literal["rescale"] = "rescale"
    stage_class = RescaleStage

    def reads(self) -> list[str]:
        return [self.input]


class MaskStep(StageStep, MaskStage):
    command: Literal["mask"] = "mask"
    stage_class = MaskStage

    def reads(self) -> list[str]:
        return [self.input]


class ThresholdStep(StageStep, ThresholdStage):
    command: Literal["threshold"] = "threshold"
    stage_class = ThresholdStage

    def reads(self) -> list[str]:
        return [self.input]


class DownsampleStep(StageStep, DownsampleStage):
    """`kind` left out: the value rule the input's writer recorded (image, labels or mask)."""

    command: Literal["downsample"] = "downsample"
    stage_class = DownsampleStage
    kind: Kind | None = None  # type: ignore[assignment]  # decided from the input when left out

    def reads(self) -> list[str]:
        return [self.input]

    def stage(self) -> DownsampleStage:
        kind = resolve_kind(DatasetPath.parse(self.input), self.kind)
        return DownsampleStage.model_validate({**self.model_dump(exclude={"command"}), "kind": kind})


class _OrganelleDefaults(StageStep):
    """Label parameters left out are the organelle's (`configs/organelles/NAME.yaml`); without an organelle every
    parameter must be given."""

    #: the fields the organelle's config sets (see `_organelle_parameters`)
    parameters: ClassVar[tuple[str, ...]] = ()

    @model_validator(mode="before")
    @classmethod
    def _fill_from_organelle(cls, data):
        if not isinstance(data, dict):
            return data
        missing = [name for name in cls.parameters if data.get(name) is None]
        data = {key: value for key, value in data.items() if value is not None or key not in cls.parameters}
        if not missing:
            return data
        if data.get("organelle") is None:
            known = ", ".join(known_organelles())
            raise FieldError(
                f"{cls.model_fields['command'].default}: give {{organelle}} NAME (known: {known}) or "
                + " and ".join(f"{{{name}}}" for name in missing)
            )
        defaults = _organelle_parameters(data["organelle"])
        return {**data, **{name: defaults[name] for name in missing}}

    def reads(self) -> list[str]:
        return [self.input]  # type: ignore[attr-defined]  # the labels stage's field


def _organelle_parameters(organelle: str) -> dict[str, int]:
    config = load_organelle(organelle)
    return {**config.clean.model_dump(), "voxels": config.dilate_voxels, **config.metric_mask.model_dump()}


class LabelsCleanStep(_OrganelleDefaults, CleanLabelsStage):
    command: Literal["labels clean"] = "labels clean"
    stage_class = CleanLabelsStage
    parameters = ("min_object_voxels", "min_hole_voxels")


class LabelsDilateStep(_OrganelleDefaults, DilateLabelsStage):
    command: Literal["labels dilate"] = "labels dilate"
    stage_class = DilateLabelsStage
    parameters = ("voxels",)


class LabelsMetricMaskStep(_OrganelleDefaults, MetricMaskStage):
    command: Literal["labels metric-mask"] = "labels metric-mask"
    stage_class = MetricMaskStage
    parameters = ("dilation_voxels", "erosion_voxels")


class LabelsInterpolateStep(StageStep, InterpolateLabelsStage):
    command: Literal["labels interpolate"] = "labels interpolate"
    stage_class = InterpolateLabelsStage

    def reads(self) -> list[str]:
        return [self.input, self.raw]

    def run(self, execution: Execution) -> None:
        if not run_and_report(self.stage(), execution).get("already_complete"):
            print(f"  and {self.sure_output}: 1 = sure, 0 = unsure (a training cell's `annotated` mask)")


# --- commands that compose stages ----------------------------------------------------------------------------------
class PredictStep(Step):
    """A checkpoint over a raw dataset -> `output/probabilities` and `output/segmentation`. `threshold`, `tta`,
    `min_object_voxels` and `min_hole_voxels` left out are the model's recorded choices; `device` and `precision`
    `auto` are decided where the workers run."""

    command: Literal["predict"] = "predict"
    checkpoint: str
    raw: str
    output: str
    #: the organelle asked for: a checkpoint trained for another one is warned about
    organelle: str | None = None
    roi_offset: VoxelOffsets | None = None
    roi_shape: Edges | None = None
    threshold: Threshold | None = None
    tta: TtaMode | None = None
    min_object_voxels: VoxelCount | None = None
    min_hole_voxels: VoxelCount | None = None
    max_span: Voxels = DEFAULT_MAX_SPAN
    device: Literal["auto", "cuda", "cpu"] = "auto"
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    step: Triple | None = None
    batch: int | None = Field(None, ge=1, le=4096)
    io_threads: int = Field(2, ge=1, le=64)
    strict: bool = False
    block: Voxels = 256
    chunk: Voxels = DEFAULT_CHUNK

    @field_validator("step", mode="before")
    @classmethod
    def _one_edge_for_all_axes(cls, value):
        if isinstance(value, int):
            return (value,) * 3
        if isinstance(value, list | tuple) and len(value) == 1:
            return tuple(value) * 3
        return value

    def reads(self) -> list[str]:
        return [_checkpoint_read(self.checkpoint), self.raw]

    def writes(self) -> list[Output]:
        return [Output(f"{self.output.rstrip('/')}/{name}", dataset=True) for name in (PROBABILITIES, SEGMENTATION)]

    def shown(self) -> str:
        return self.output

    def identity(self) -> dict[str, str]:
        return {"checkpoint": file_digest(resolve_checkpoint(self.checkpoint))}

    def run(self, execution: Execution) -> None:
        checkpoint = str(resolve_checkpoint(self.checkpoint))
        # cluster jobs decide `auto` on their nodes: this machine's GPUs say nothing about theirs
        on_this_machine = execution.launcher is None or isinstance(execution.launcher, LocalLauncher)
        device = select_device(self.device) if on_this_machine else self.device
        precision = default_precision(device) if on_this_machine and self.precision == "auto" else self.precision
        recommended = recommended_settings(checkpoint)
        trained_for = load_checkpoint(checkpoint).get("organelle")
        if self.organelle and trained_for and trained_for != self.organelle:
            logger.warning(
                "%s was trained for %s, not %s; check the checkpoint", checkpoint, trained_for, self.organelle
            )
        clean_up = CleanUp(
            min_object_voxels=_given(self.min_object_voxels, recommended["clean_up"].min_object_voxels),
            min_hole_voxels=_given(self.min_hole_voxels, recommended["clean_up"].min_hole_voxels),
            max_span=self.max_span,
        )
        stage = PredictStage(
            checkpoint=checkpoint,
            raw=self.raw,
            output=self.output,
            roi_offset=self.roi_offset,
            roi_shape=self.roi_shape,
            threshold=_given(self.threshold, recommended["threshold"]),
            tta=_given(self.tta, recommended["tta"]),
            block=self.block,
            chunk=self.chunk,
            step=self.step,
            batch=self.batch,
            io_threads=self.io_threads,
            device=device,
            precision=precision,
            strict=self.strict,
        )
        # one worker per visible GPU, else one using all cores (one job on a cluster)
        workers = execution.workers_or(torch.cuda.device_count() if on_this_machine and device == "cuda" else 1)
        raw = open_dataset(self.raw)
        maximum, top = (value_max(raw), np.iinfo(raw.dtype).max) if raw.dtype.kind == "u" else (0, 0)
        if maximum < top:
            print(f"  note: {self.raw} holds values up to {maximum} in {raw.dtype}: normalized by {maximum}, not {top}")
        stages = prediction_stages(stage, clean_up)
        if len(stages) > 1:
            _prepare_clean_up_output(stages[1], execution.overwrite)
        for part in stages:
            run_and_report(part, Execution(**{**execution.__dict__, "workers": workers}))
        cleaned = (
            f", objects < {clean_up.min_object_voxels} removed, holes < {clean_up.min_hole_voxels} filled"
            if clean_up.active()
            else ""
        )
        print(
            f"  segmentation: {self.output.rstrip('/')}/{SEGMENTATION} (threshold {stage.threshold:g}, test-time "
            f"augmentation {stage.tta}{cleaned})"
            + (f"; checkpoint: {checkpoint}" if checkpoint != self.checkpoint else "")
        )


def _checkpoint_read(spec: str) -> str:
    """The checkpoint file a step reads: its resolved file once the checkpoint (or run folder) exists, else where it
    will be (an earlier stage may write it)."""
    location = checkpoint_location(spec)
    return str(resolve_checkpoint(spec)) if location.exists() else str(location)


def _given(value, default):
    return default if value is None else value


def _prepare_clean_up_output(threshold: ThresholdStage, overwrite: bool) -> None:
    """Nothing is predicted if the clean-up would then refuse its output; with `overwrite`, an existing segmentation
    goes now (it belongs to the probabilities about to be replaced, so must not look complete)."""
    segmentation = DatasetPath.parse(threshold.output)
    if not segmentation.exists():
        return
    if overwrite:
        output = DatasetOutput(segmentation)
        refuse_if_running(output, str(segmentation))
        output.remove()
    elif DatasetPath.parse(threshold.input).exists():
        check_writable(threshold)  # a resumable clean-up of this command passes
    else:
        raise UserError(
            f"{segmentation} already exists and was not written by this exact command; pass --overwrite to replace it"
        )


class ObjectsStep(Step):
    """A segmentation -> object ids (`labels_out`, default SEGMENTATION_objects beside it) and their table (`csv`)."""

    command: Literal["objects"] = "objects"
    segmentation: str
    csv: str
    labels_out: str | None = None
    block: Voxels = OBJECTS_BLOCK
    chunk: Voxels = DEFAULT_CHUNK
    #: split touching objects: the seed distance in nm (None: connected components only) and the growth reach
    seed_distance: ObjectsDistance | None = None
    reach: ObjectsDistance = DEFAULT_REACH
    #: morphometrics: the axis across the 2D sections, another class and a cell mask to measure distances to
    section_axis: Literal["z", "y", "x"] = "z"
    other: str | None = None
    mask: str | None = None
    max_distance: ObjectsDistance = DEFAULT_MAX_DISTANCE

    @property
    def labels(self) -> str:
        return self.labels_out or self.segmentation.rstrip("/") + "_objects"

    def reads(self) -> list[str]:
        return [self.segmentation, *(path for path in (self.other, self.mask) if path)]

    def writes(self) -> list[Output]:
        return [Output(self.csv), Output(self.labels, dataset=True)]

    def run(self, execution: Execution) -> None:
        result = find_objects(
            self.segmentation,
            self.csv,
            self.labels,
            block=self.block,
            chunk=self.chunk,
            workers=execution.workers_or(1),
            overwrite=execution.overwrite,
            progress=execution.progress,
            launcher=execution.launcher,
            seed_distance=self.seed_distance,
            reach=self.reach,
            measures={
                "section_axis": self.section_axis,
                "other": self.other,
                "mask": self.mask,
                "max_distance": self.max_distance,
            },
        )
        if not result.summaries:
            print(f"{result.labels} is already complete (same command, same parameters)")
        else:
            steps = "; ".join(
                f"{name}: {summary['blocks_processed']} blocks processed, {summary['blocks_skipped']} skipped"
                for name, summary in result.summaries.items()
            )
            kind = "6-connected" if self.seed_distance is None else f"split at {self.seed_distance:g} nm"
            print(f"wrote {result.labels}: {result.objects} objects ({kind})\n  {steps}; {result.seconds:.1f} s")
        if result.csv_written:
            print(f"wrote {result.csv}: {result.objects} rows (lengths in nm, volumes in nm^3, areas in nm^2)")
        else:
            print(f"{result.csv} already holds this table; nothing to do")


class MeshStep(Step):
    """Object ids written by `objects` -> mesh files in the folder `output`."""

    command: Literal["mesh"] = "mesh"
    labels: str
    output: str
    formats: tuple[Format, ...] = DEFAULT_FORMATS
    step_size: Voxels = 1
    smooth: Iterations = SMOOTH_ITERATIONS
    simplify: Reduction = SIMPLIFY
    max_error: SimplifyError = MAX_ERROR
    block: Voxels = OBJECTS_BLOCK

    @field_validator("formats")
    @classmethod
    def _each_once(cls, formats: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(dict.fromkeys(formats))

    def reads(self) -> list[str]:
        return [self.labels]

    def writes(self) -> list[Output]:
        return [Output(self.output, marker="summary.json")]

    def run(self, execution: Execution) -> None:
        stage = MeshStage.model_validate(self.model_dump(exclude={"command"}))
        result = make_meshes(
            stage,
            workers=execution.workers_or(1),
            overwrite=execution.overwrite,
            progress=execution.progress,
            launcher=execution.launcher,
        )
        summary = result.summary
        if result.run is None:
            print(f"{result.folder} is already complete (same command, same parameters)")
        else:
            print(
                f"wrote {result.folder}: {summary['meshes']} meshes of {summary['objects']} objects "
                f"({summary['vertices']} vertices, {summary['triangles']} triangles; {', '.join(summary['formats'])})\n"
                f"  {result.run['blocks_processed']} blocks processed, {result.run['blocks_skipped']} skipped, "
                f"{result.run['seconds']:.1f} s"
            )
        if "neuroglancer" in summary["formats"]:
            print(
                f"  neuroglancer: add precomputed://<URL of {result.folder / 'neuroglancer'}> to the segmentation layer"
            )


class TrainStep(Step):
    """Train as `config` (a training YAML) says; `iterations` overrides its iterations."""

    command: Literal["train"] = "train"
    config: str
    iterations: Count | None = None

    def load(self):
        from incasem_like.training.config import load_config

        return load_config(self.config, {"iterations": self.iterations} if self.iterations else None)

    def reads(self) -> list[str]:
        config = self.load()
        datasets = [
            str(cell.path(name)) for cell in config.training + config.validation for name in cell.datasets().values()
        ]
        return [self.config, *datasets]

    def writes(self) -> list[Output]:
        return [Output(self.load().run_dir, marker="summary.json")]

    def identity(self) -> dict[str, str]:
        return {"config": file_digest(self.config)}

    def run(self, execution: Execution) -> None:
        from incasem_like.training.train import train

        if execution.resume and execution.overwrite:
            raise UserError("--resume and --overwrite exclude each other: continue the run or replace it")
        report_training(train(self.load(), execution.resume, execution.overwrite, execution.progress))


class FinetuneStep(TrainStep):
    """Fine-tune from `checkpoint` (a file, a finished run's folder or bundled:NAME) as `config` says."""

    command: Literal["finetune"] = "finetune"  # type: ignore[assignment]
    checkpoint: str
    with_optimizer: bool = False

    def reads(self) -> list[str]:
        return [*super().reads(), _checkpoint_read(self.checkpoint)]

    def identity(self) -> dict[str, str]:
        return {**super().identity(), "checkpoint": file_digest(resolve_checkpoint(self.checkpoint))}

    def run(self, execution: Execution) -> None:
        from incasem_like.training.train import finetune

        checkpoint = str(resolve_checkpoint(self.checkpoint))
        summary = finetune(self.load(), checkpoint, self.with_optimizer, execution.overwrite, execution.progress)
        report_training(summary)
        result = summary["finetune"]
        print(f"validation F1 before {result['f1_before']:.3f}, after {result['f1_after']:.3f}")


def report_training(summary: dict) -> None:
    best = summary["best"]
    timing = summary["timing"]
    print(
        f"trained {summary['organelle']} to iteration {summary['iterations']} on {summary['device']} in "
        f"{timing['wall_seconds'] / 60:.1f} min ({timing['iterations_per_second']} it/s, waiting for data "
        f"{timing['data_wait_fraction']:.0%})"
    )
    if timing["stopped_at_time_limit"]:
        print(
            "stopped at the time limit (max_minutes or time_budget_minutes); --resume continues towards the "
            "configured iterations"
        )
    if best:
        print(
            f"best validation F1 {best['f1']:.3f} (threshold {summary['threshold']}) at iteration {best['iteration']}: "
            f"{best['checkpoint']}"
        )
        swept = summary["best_at_swept_threshold"]
        print(f"  best over thresholds: F1 {swept['f1']:.3f} at {swept['threshold']} (iteration {swept['iteration']})")
    print(f"summary: {summary['run_dir']}/summary.json")


class EvaluateStep(Step):
    """A prediction scored against labels, every voxel counting where `metric_mask` and `mask` are > 0."""

    command: Literal["evaluate"] = "evaluate"
    prediction: str
    labels: str
    metric_mask: str | None = None
    mask: str | None = None
    roi_offset: VoxelOffsets | None = None
    roi_shape: Edges | None = None
    probabilities: bool = False
    thresholds: str | None = None
    json_file: str | None = Field(None, alias="json")

    model_config = {**Step.model_config, "populate_by_name": True}

    def reads(self) -> list[str]:
        return [path for path in (self.prediction, self.labels, self.metric_mask, self.mask) if path]

    def writes(self) -> list[Output]:
        return [Output(self.json_file)] if self.json_file else []

    def shown(self) -> str:
        return self.json_file or "(scores printed)"

    def run(self, execution: Execution) -> None:
        from incasem_like.evaluation.evaluate import (
            check_json_output,
            evaluate,
            format_report,
            open_inputs,
            parse_thresholds,
            write_json,
        )

        thresholds = parse_thresholds(self.thresholds) if self.thresholds is not None else None
        if self.json_file is not None:
            check_json_output(Path(self.json_file), execution.overwrite)
        roi = [*self.roi_offset, *self.roi_shape] if self.roi_offset and self.roi_shape else None
        inputs = open_inputs(self.prediction, self.labels, self.metric_mask, self.mask, roi, self.probabilities)
        result = evaluate(inputs, thresholds, threads=execution.threads or 0, progress=execution.progress)
        print(format_report(result))
        if self.json_file is not None:
            write_json(Path(self.json_file), result)
            print(f"results: {self.json_file}")


class ExportStep(Step):
    """A dataset -> one TIFF per z slice in the folder `out_dir`, or (`format: mrc`) one MRC file `out_dir`."""

    command: Literal["export"] = "export"
    dataset: str
    out_dir: str
    uncrop: bool = False
    keep_values: bool = False
    format: Literal["tiff", "mrc"] = "tiff"

    def reads(self) -> list[str]:
        return [self.dataset]

    def writes(self) -> list[Output]:
        return [Output(self.out_dir)]

    def run(self, execution: Execution) -> None:
        from incasem_like.stages.export import check_output_dir, check_output_file, export, export_mrc, plan_export

        threads = execution.threads or 2
        out_dir = Path(self.out_dir)
        (check_output_file if self.format == "mrc" else check_output_dir)(out_dir, execution.overwrite)
        plan = plan_export(self.dataset, self.uncrop, self.keep_values, threads)
        if self.format == "mrc":
            summary = export_mrc(plan, out_dir, threads=threads, progress=execution.progress)
            print(
                f"wrote {out_dir}: {' x '.join(map(str, plan.frame_shape))} (z y x) {plan.volume.dtype}, voxel size "
                f"{nm_text(plan.volume.voxel_size)}; {summary['seconds']:.1f} s"
            )
            return
        summary = export(plan, out_dir, threads=threads, progress=execution.progress)
        names, volume = summary["names"], plan.volume
        values = ", 0/1 written as 0/255" if plan.scale_binary else ""
        print(
            f"wrote {out_dir}: {len(names)} slices {names[0]} .. {names[-1]}, "
            f"{' x '.join(map(str, plan.frame_shape[1:]))} {volume.dtype}{values}; {summary['seconds']:.1f} s"
        )
        if self.uncrop:
            ranges = ", ".join(
                f"{axis} {begin}..{begin + size - 1}" for axis, begin, size in zip("zyx", plan.placement, volume.shape)
            )
            print(f"  original frame {tuple(plan.frame_shape)} voxels: the data fill {ranges}; 0 elsewhere")


class ExportModelStep(Step):
    """A checkpoint (or a finished run's best) -> a bioimage.io package, a TorchScript file or an ONNX file `out`;
    the package's test tensors come from the centre of `test_raw` (default: the embedded Lucchi sample)."""

    command: Literal["export-model"] = "export-model"
    checkpoint: str
    out: str
    format: ExportFormat = "bioimageio"
    test_raw: str | None = None
    name: str | None = None
    license: str = "CC-BY-4.0"

    def reads(self) -> list[str]:
        return [_checkpoint_read(self.checkpoint), *([self.test_raw] if self.test_raw else [])]

    def writes(self) -> list[Output]:
        return [Output(self.out)]

    def identity(self) -> dict[str, str]:
        return {"checkpoint": file_digest(resolve_checkpoint(self.checkpoint))}

    def run(self, execution: Execution) -> None:
        from incasem_like.nn.export import export_onnx, export_package, export_shape, export_torchscript

        out = Path(self.out)
        if out.exists() and not execution.overwrite:
            raise UserError(f"{out} already exists; pass --overwrite to replace it")
        checkpoint = resolve_checkpoint(self.checkpoint)
        model, state = model_from_checkpoint(checkpoint)
        if FOREIGN_KEY in state:
            raise UserError(
                f"{checkpoint}: a bioimage.io package of another tool; export-model exports incasem-like's own models "
                "(give the package itself to the other tools)"
            )
        shape = export_shape(model.config)
        if self.format == "bioimageio":
            raw, voxel_size = _test_raw(self.test_raw, state)
            name = self.name or f"incasem-like {state.get('organelle') or 'organelle'} U-Net ({checkpoint.stem})"
            export_package(checkpoint, out, raw, voxel_size, name, self.license)
        else:
            (export_torchscript if self.format == "torchscript" else export_onnx)(model, shape, out)
        print(f"wrote {out}: {self.format}, input (N, 1, {', '.join(map(str, shape))}) normalized as in training")


def _test_raw(dataset: str | None, state: dict) -> tuple[np.ndarray, tuple[float, float, float]]:
    """Test raw for a package (the centre of `dataset`, or the embedded sample) and its voxel size (nm; the
    checkpoint's where it records one)."""
    from incasem_like.workflow.demo import SAMPLE

    if dataset is None:
        import tifffile

        raw = np.stack([tifffile.imread(path) for path in sorted((Path(str(SAMPLE)) / "raw").glob("*.tif"))])
        voxel_size: tuple = (5.0, 5.0, 5.0)
    else:
        volume = open_dataset(dataset)
        raw, voxel_size = volume[volume.roi], tuple(float(v) for v in volume.voxel_size)
    trained = state.get("voxel_size") or voxel_size
    return raw, (float(trained[0]), float(trained[1]), float(trained[2]))


class ViewStep(Step):
    """A container's datasets in neuroglancer: served from here until Ctrl-C, or a link to `base_url` where the
    container is hosted (nothing served)."""

    command: Literal["view"] = "view"
    container: str
    datasets: list[str] = []
    port: Annotated[int, Field(ge=0, le=65535)] | None = None
    bind: str | None = None
    base_url: str | None = None
    client_url: str | None = None
    state_file: str | None = None
    open: bool = False

    def reads(self) -> list[str]:
        return [self.container]

    def writes(self) -> list[Output]:
        return [Output(self.state_file)] if self.state_file else []

    def shown(self) -> str:
        return self.container

    def run(self, execution: Execution) -> None:
        from incasem_like.review.serve import serve, share

        if self.state_file is not None and Path(self.state_file).exists() and not execution.overwrite:
            raise UserError(f"{self.state_file} already exists; pass --overwrite to replace it")
        if self.base_url is not None:
            share(self, self.base_url)
        else:
            serve(self)


class ReportStep(Step):
    """A container's results summarised (counts, volumes, fractions of the cell, histograms, slice overlays) in
    the folder `out`: report.html, report.json and the images."""

    command: Literal["report"] = "report"
    container: str
    out: str | None = None
    datasets: list[str] = []
    mask: str | None = None
    raw: str | None = None

    @property
    def folder(self) -> str:
        return self.out or f"{self.container.rstrip('/').removesuffix('.zarr')}_report"

    def reads(self) -> list[str]:
        return [self.container]

    def writes(self) -> list[Output]:
        return [Output(self.folder, marker="report.html")]

    def shown(self) -> str:
        return f"{self.folder}/report.html"

    def run(self, execution: Execution) -> None:
        from incasem_like.review.report import write_report

        reports = write_report(
            Path(self.container), Path(self.folder), self.datasets, self.mask, self.raw, execution.overwrite
        )
        for report in reports:
            count = report.summary.get("objects")
            print(f"  {report.name}: {report.summary['volume_nm3']:.4g} nm^3" + (f", {count} objects" if count else ""))
        print(f"report: {self.folder}/report.html")


#: every step, by its command
STEP_TYPES: dict[str, type[Step]] = {
    step.model_fields["command"].default: step
    for step in (
        ConvertStep,
        RescaleStep,
        ClaheStep,
        MaskStep,
        LabelsCleanStep,
        LabelsDilateStep,
        LabelsMetricMaskStep,
        LabelsInterpolateStep,
        DownsampleStep,
        ThresholdStep,
        PredictStep,
        EvaluateStep,
        ExportStep,
        ExportModelStep,
        ObjectsStep,
        MeshStep,
        TrainStep,
        FinetuneStep,
        ReportStep,
        ViewStep,
    )
}

AnyStep = Annotated[
    ConvertStep
    | RescaleStep
    | ClaheStep
    | MaskStep
    | LabelsCleanStep
    | LabelsDilateStep
    | LabelsMetricMaskStep
    | LabelsInterpolateStep
    | DownsampleStep
    | ThresholdStep
    | PredictStep
    | EvaluateStep
    | ExportStep
    | ExportModelStep
    | ObjectsStep
    | MeshStep
    | TrainStep
    | FinetuneStep
    | ReportStep
    | ViewStep,
    Field(discriminator="command"),
]
STEP_ADAPTER: TypeAdapter[Any] = TypeAdapter(AnyStep)
