"""The demo end to end on the embedded sample, with the bundled model, as a newcomer runs it."""

import re

import pytest

from incasem_like.store.datasets import open_dataset
from tests.conftest import run_cli

#: the bundled model's F1 on the sample (every voxel, its threshold and clean-up; measured 0.924): the demo's floor
F1_FLOOR = 0.90


@pytest.mark.slow  # ~1 minute end to end: with the real-data tests (CI runs both)
def test_demo_predicts_and_scores_the_sample_then_resumes(tmp_path):
    result = run_cli("demo", "--out", tmp_path, "--no-view", "--quiet", timeout=900)

    assert result.returncode == 0, result.stderr
    f1 = float(re.search(r"mitochondria F1 ([0-9.]+)", result.stdout).group(1))
    assert f1 >= F1_FLOOR, result.stdout
    segmentation = open_dataset(tmp_path / "sample.zarr/volumes/predictions/demo/mito/segmentation")
    assert segmentation.shape == (40, 384, 384) and 0 < segmentation[segmentation.roi].mean() < 0.5
    again = run_cli("demo", "--out", tmp_path, "--no-view", "--quiet", timeout=900)
    assert again.returncode == 0, again.stderr
    assert f"mitochondria F1 {f1:.3f}" in again.stdout
