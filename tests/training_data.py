"""Small training cells on disk for the training tests: crops of the embedded Lucchi sample, or synthetic."""

from pathlib import Path

import numpy as np
import tifffile
import yaml

from incasem_like.workflow.demo import SAMPLE
from tests.conftest import write_dataset

#: a tiny U-Net: one downsampling, 4 feature maps; input 28 -> output 10 (context 9)
TINY_NETWORK = {"feature_maps": 4, "feature_map_factor": 2, "downsamplings": 1, "input_shape": [28, 28, 28]}


#: y, x of the crops' corner in the 384 x 384 sample: a region with mitochondria (~20% of voxels)
CORNER = (192, 96)


def sample_stack(folder: str, shape) -> np.ndarray:
    slices = sorted((Path(str(SAMPLE)) / folder).iterdir(), key=lambda p: p.name)[: shape[0]]
    (y, x), (height, width) = CORNER, shape[1:]
    return np.stack([tifffile.imread(p)[y : y + height, x : x + width] for p in slices])


def sample_cell(container: Path, shape=(40, 96, 96)) -> dict:
    """Raw (uint8) and mito labels (0/1) of the embedded sample cropped to `shape`; returns the config entry."""
    write_dataset(container / "volumes/raw", sample_stack("raw", shape))
    write_dataset(container / "volumes/labels/mito", (sample_stack("mito", shape) > 0).astype(np.uint8))
    return {"container": str(container), "raw": "volumes/raw", "labels": "volumes/labels/mito"}


def write_config(path: Path, run_dir: Path, training: list[dict], validation: list[dict] = (), **overrides) -> Path:
    config = {
        "organelle": "mito",
        "run_dir": str(run_dir),
        "network": TINY_NETWORK,
        "training": list(training),
        "validation": list(validation),
        "iterations": 4,
        "checkpoint_every": 2,
        "validate_every": 2,
        "snapshot_every": 2,
        "data_workers": 0,
        "device": "cpu",
        **overrides,
    }
    path.write_text(yaml.safe_dump(config))
    return path
