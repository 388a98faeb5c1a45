"""The demo: runs the product on the embedded sample (a crop of the Lucchi FIB-SEM data), offline, on the CPU."""

from importlib.resources import files
from pathlib import Path

from incasem_like.blockwise.runner import run_stage
from incasem_like.convert import ConvertStage, TiffStack, label_mode_for
from incasem_like.datasets import RAW, DatasetPath, labels_name, open_dataset

SAMPLE = files("incasem_like") / "sample_data" / "lucchi_crop"
SAMPLE_VOXEL_SIZE = (5, 5, 5)


def run_demo(out_dir: Path, workers: int = 2, overwrite: bool = False, progress: bool = True) -> Path:
    """Convert the sample's raw slices and mitochondria labels into `out_dir/sample.zarr`; returns the container."""
    container = Path(out_dir) / "sample.zarr"
    sample = Path(str(SAMPLE))
    for folder, name, label in (("raw", RAW, False), ("mito", labels_name("mito"), True)):
        stage = ConvertStage(
            source=str(sample / folder),
            output=str(container / name),
            voxel_size=SAMPLE_VOXEL_SIZE,
            chunk=64,
            label_mode=label_mode_for(TiffStack.locate(sample / folder)) if label else "image",
        )
        run_stage(stage, workers=workers, overwrite=overwrite, progress=progress)
        array = open_dataset(DatasetPath(container, name))
        print(f"  {container / name}: {tuple(array.shape)} {array.dtype}, voxel size {tuple(array.voxel_size)} nm")
    return container
