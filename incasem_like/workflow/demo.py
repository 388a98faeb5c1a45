"""The demo: the product on the embedded sample (a crop of the Lucchi FIB-SEM data), offline, on the CPU.

TIFF slices -> OME-Zarr -> CLAHE -> mitochondria prediction with the bundled model (with the threshold,
test-time augmentation and clean-up it records) -> F1 and IoU against the sample's labels over every voxel (the
field's metric) and outside the exclusion zone (ASEM's), every step through the same stages the commands run.
"""

from importlib.resources import files
from pathlib import Path

from incasem_like.blockwise.launchers import Launcher
from incasem_like.blockwise.runner import run_stage
from incasem_like.evaluation.evaluate import evaluate, open_inputs
from incasem_like.nn.models import bundled_model
from incasem_like.stages.clahe import ClaheStage
from incasem_like.stages.convert import ConvertStage, TiffStack, label_mode_for
from incasem_like.stages.labels import MetricMaskStage, load_organelle
from incasem_like.stages.predict import PredictStage, prediction_stages, recommended_settings
from incasem_like.store.datasets import RAW, RAW_CLAHE, DatasetPath, labels_name, metric_mask_name, prediction_names

SAMPLE = files("incasem_like") / "sample_data" / "lucchi_crop"
SAMPLE_VOXEL_SIZE = (5, 5, 5)
#: the sample is small: 64-voxel chunks and blocks give the workers several blocks each
CHUNK = 64
RUN = "demo"


def run_demo(
    out_dir: Path, workers: int = 2, overwrite: bool = False, progress: bool = True, launcher: Launcher | None = None
) -> dict:
    """Run the demo into `out_dir/sample.zarr`; returns the container and the evaluation of the prediction."""
    container = Path(out_dir) / "sample.zarr"
    sample = Path(str(SAMPLE))

    def step(message: str, stage) -> None:
        print(f"  {message}", flush=True)
        run_stage(stage, workers=workers, overwrite=overwrite, launcher=launcher, progress=progress)

    for folder, name, label in (("raw", RAW, False), ("mito", labels_name("mito"), True)):
        stage = ConvertStage(
            source=str(sample / folder),
            output=str(container / name),
            voxel_size=SAMPLE_VOXEL_SIZE,
            chunk=CHUNK,
            label_mode=label_mode_for(TiffStack.locate(sample / folder)) if label else "image",
        )
        step(f"convert {sample / folder} -> {container / name}", stage)
    step(f"clahe -> {container / RAW_CLAHE}", ClaheStage(input=str(container / RAW), output=str(container / RAW_CLAHE)))
    metric_mask = str(container / metric_mask_name("mito"))
    step(
        f"labels metric-mask -> {metric_mask}",
        MetricMaskStage(
            input=str(container / labels_name("mito")),
            output=metric_mask,
            organelle="mito",
            chunk=CHUNK,
            **load_organelle("mito").metric_mask.model_dump(),
        ),
    )
    probabilities, segmentation = prediction_names(RUN, "mito")
    recommended = recommended_settings(str(bundled_model("mito")))
    output = str(DatasetPath(container, probabilities).group_path.parent)
    predict = PredictStage(
        checkpoint=str(bundled_model("mito")),
        threshold=recommended["threshold"],
        tta=recommended["tta"],
        raw=str(container / RAW_CLAHE),
        output=output,
        device="cpu",
        block=2 * CHUNK,
        chunk=CHUNK,
    )
    for stage in prediction_stages(predict, recommended["clean_up"]):
        step(f"{stage.task_name} mitochondria with the bundled model -> {stage.output_paths()[-1]}", stage)
    print("  evaluate against the sample's labels (every voxel; and outside the exclusion zone)", flush=True)
    scores = {
        name: evaluate(open_inputs(str(container / dataset), str(container / labels_name("mito")), metric_mask))
        for name, dataset in (("segmentation", segmentation), ("probabilities", probabilities))
    }
    return {"container": container, "threshold": recommended["threshold"], "tta": recommended["tta"], **scores}
