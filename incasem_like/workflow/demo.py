"""The demo: the product on the embedded sample (a crop of the Lucchi FIB-SEM data), offline, on the CPU.

A pipeline value, run like a pipeline file (finished stages are skipped on a rerun): TIFF slices -> OME-Zarr ->
CLAHE -> mitochondria prediction with the bundled model (with the threshold, test-time augmentation and clean-up it
records) -> F1 and IoU against the sample's labels over every voxel (the field's metric) and outside the
exclusion zone (ASEM's).
"""

import json
from importlib.resources import files
from pathlib import Path

from incasem_like.blockwise.launchers import Launcher
from incasem_like.nn.models import bundled_model
from incasem_like.stages.predict import recommended_settings
from incasem_like.store.datasets import RAW, RAW_CLAHE, labels_name, metric_mask_name, prediction_names
from incasem_like.workflow.pipeline import Pipeline, plan, run_pipeline
from incasem_like.workflow.step import Execution
from incasem_like.workflow.steps import ClaheStep, ConvertStep, EvaluateStep, LabelsMetricMaskStep, PredictStep

SAMPLE = files("incasem_like") / "sample_data" / "lucchi_crop"
SAMPLE_VOXEL_SIZE = (5, 5, 5)
#: the sample is small: 64-voxel chunks and blocks give the workers several blocks each
CHUNK = 64
RUN = "demo"
EVALUATION = "evaluation_mito.json"


def demo_pipeline(out_dir: Path, workers: int = 2, launcher: Launcher | None = None) -> Pipeline:
    """The demo's stages, writing into `out_dir/sample.zarr` (and the evaluation beside it)."""
    container = Path(out_dir) / "sample.zarr"
    sample = Path(str(SAMPLE))
    raw, raw_clahe, labels = (str(container / name) for name in (RAW, RAW_CLAHE, labels_name("mito")))
    metric_mask = str(container / metric_mask_name("mito"))
    probabilities, segmentation = prediction_names(RUN, "mito")
    steps = [
        ("convert_raw", ConvertStep(source=str(sample / "raw"), output=raw, voxel_size=SAMPLE_VOXEL_SIZE, chunk=CHUNK)),
        (
            "convert_labels",
            ConvertStep(
                source=str(sample / "mito"),
                output=labels,
                voxel_size=SAMPLE_VOXEL_SIZE,
                chunk=CHUNK,
                label_mode="labels",
            ),
        ),
        ("clahe", ClaheStep(input=raw, output=raw_clahe)),
        ("metric_mask", LabelsMetricMaskStep(input=labels, output=metric_mask, organelle="mito", chunk=CHUNK)),
        (
            "predict",
            PredictStep(
                checkpoint="bundled:mito",
                raw=raw_clahe,
                output=str(container / Path(probabilities).parent),
                device="cpu",
                block=2 * CHUNK,
                chunk=CHUNK,
            ),
        ),
        (
            "evaluate",
            EvaluateStep(
                prediction=str(container / segmentation),
                labels=labels,
                metric_mask=metric_mask,
                json_file=str(Path(out_dir) / EVALUATION),
            ),
        ),
    ]
    description = "the embedded sample: convert, CLAHE, metric mask, bundled mito model, F1"
    return Pipeline.of("demo", description, steps, Execution(workers=workers, launcher=launcher))


def run_demo(
    out_dir: Path, workers: int = 2, overwrite: bool = False, progress: bool = True, launcher: Launcher | None = None
) -> dict:
    """Run the demo into `out_dir` (`overwrite`: every stage again); returns the container, the model's choices and
    the evaluation of its segmentation."""
    pipeline = demo_pipeline(out_dir, workers, launcher)
    run_pipeline(pipeline, plan(pipeline, [stage.name for stage in pipeline.stages] if overwrite else (), not progress))
    recommended = recommended_settings(str(bundled_model("mito")))
    return {
        "container": Path(out_dir) / "sample.zarr",
        "threshold": recommended["threshold"],
        "tta": recommended["tta"],
        "segmentation": json.loads((Path(out_dir) / EVALUATION).read_text()),
    }
