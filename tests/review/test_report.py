"""`incasem-like report`: summaries of segmentation and object datasets, their plots, and the page in Chromium."""

import json

import numpy as np
import pytest

from incasem_like.store.datasets import DatasetPath, update_dataset_meta
from tests.browser import headless_chromium, missing_browser, serve_directory
from tests.conftest import run_cli, write_dataset
from tests.training_data import sample_stack


@pytest.fixture
def cell(tmp_path):
    """The sample's raw and mito labels (as a segmentation) with object ids, and a cell mask of its upper half."""
    container = tmp_path / "cell.zarr"
    labels = (sample_stack("mito", (24, 96, 96)) > 0).astype(np.uint8)
    write_dataset(container / "volumes/raw_clahe", sample_stack("raw", (24, 96, 96)), voxel_size=(5, 4, 4))
    segmentation = write_dataset(container / "volumes/predictions/run1/mito/segmentation", labels, voxel_size=(5, 4, 4))
    update_dataset_meta(segmentation, kind="labels")
    mask = np.zeros_like(labels)
    mask[:, :48] = 1
    write_dataset(container / "volumes/masks/cell", mask, voxel_size=(5, 4, 4))
    objects = run_cli("objects", segmentation, tmp_path / "mito.csv", "--quiet")
    assert objects.returncode == 0, objects.stderr
    return container, labels, mask


def test_the_report_summarises_segmentations_and_objects_and_renders_in_chromium(tmp_path, cell):
    container, labels, mask = cell
    result = run_cli("report", container, "--mask", "volumes/masks/cell", "--quiet")
    assert result.returncode == 0, result.stderr
    out = tmp_path / "cell_report"
    report = json.loads((out / "report.json").read_text())
    by_name = {entry["name"]: entry for entry in report["datasets"]}
    assert set(by_name) == {
        "volumes/predictions/run1/mito/segmentation",
        "volumes/predictions/run1/mito/segmentation_objects",
    }
    segmentation = by_name["volumes/predictions/run1/mito/segmentation"]
    assert segmentation["foreground_voxels"] == labels.sum()
    assert segmentation["volume_nm3"] == pytest.approx(labels.sum() * 5 * 4 * 4)
    assert segmentation["volume_fraction_of_cell"] == pytest.approx((labels & mask).sum() / mask.sum())
    objects = by_name["volumes/predictions/run1/mito/segmentation_objects"]
    rows = (tmp_path / "mito.csv").read_text().splitlines()[1:]
    assert objects["objects"] == len(rows) >= 1
    assert objects["object_volume_total_nm3"] == pytest.approx(labels.sum() * 80)
    assert objects["object_volume_mean_nm3"] == pytest.approx(labels.sum() * 80 / len(rows))
    assert 0 < objects["surface_to_volume_per_nm"] < 1
    images = set(objects["images"])
    assert {name.split("_", 1)[1] for name in images} >= {
        "volumes_predictions_run1_mito_segmentation_objects_volume_nm3.png",
        "volumes_predictions_run1_mito_segmentation_objects_overlay.png",
    }
    assert all((out / name).stat().st_size > 1000 for entry in report["datasets"] for name in entry["images"])
    assert "report: cell_report/report.html" in result.stdout or "cell_report/report.html" in result.stdout

    again = run_cli("report", container, "--quiet")
    assert again.returncode == 2 and "already exists; pass --overwrite" in again.stderr
    if missing_browser():
        pytest.skip(f"browser tests: {missing_browser()}")
    with serve_directory(out) as url, headless_chromium() as browser:
        browser.get(f"{url}/report.html")
        assert browser.title == "incasem-like report: cell.zarr"
        assert len(browser.find_elements("css selector", "section.dataset")) == 2
        loaded = browser.execute_script("return Array.from(document.images).map(i => i.complete && i.naturalWidth > 0)")
        assert len(loaded) == sum(len(entry["images"]) for entry in report["datasets"]) and all(loaded)
        browser.save_screenshot(str(tmp_path / "report.png"))


@pytest.mark.parametrize(
    "options, message",
    [
        (["--mask", "volumes/coarse"], "volumes/coarse: voxel size (10, 8, 8) nm differs from"),
        (["--datasets", "volumes/raw_clahe"], "volumes/raw_clahe: dtype"),
        (["--datasets", "volumes/nothing"], "volumes/nothing"),
        (["--raw", "volumes/coarse"], "give --raw on the datasets' grid"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, cell, options, message):
    container, _, _ = cell
    write_dataset(container / "volumes/coarse", np.ones((12, 48, 48), np.uint8), voxel_size=(10, 8, 8))
    write_dataset(container / "volumes/float", np.ones((12, 48, 48), np.float32))
    if options[1] == "volumes/raw_clahe":
        options = ["--datasets", "volumes/float"]
        message = "volumes/float: dtype float32 is not a segmentation or label dataset"
    result = run_cli("report", container, *options, "--quiet")
    assert result.returncode == 2 and message in result.stderr, result.stderr
    assert result.stderr.count("\n") == 1
    assert not list(tmp_path.glob("*report*")) and not list(tmp_path.glob(".cell_report*"))
    assert DatasetPath(container, "volumes/coarse").exists()
