import json
import re
from functools import partial
from importlib.resources import files

import numpy as np
import pytest
from scipy import ndimage

from incasem_like.cli.main import main
from incasem_like.core.errors import UserError
from incasem_like.core.geometry import Roi, to_world
from incasem_like.evaluation.evaluate import evaluation_blocks, parse_thresholds
from incasem_like.ops.metrics import overlap_scores, threshold_counts, value_histograms
from incasem_like.ops.morphology import metric_mask
from incasem_like.store.datasets import DatasetPath, create_dataset, update_dataset_meta
from tests import conftest
from tests.conftest import read_dataset, run_cli

write_dataset = partial(conftest.write_dataset, chunk=32)
SAMPLE_MITO = files("incasem_like") / "sample_data" / "lucchi_crop" / "mito"


def expected_scores(predicted: np.ndarray, truth: np.ndarray, counted: np.ndarray) -> dict:
    """Counts and scores straight from the definitions (all denominators nonzero in these tests)."""
    tp = int((predicted & truth & counted).sum())
    fp = int((predicted & ~truth & counted).sum())
    fn = int((~predicted & truth & counted).sum())
    precision, recall = tp / (tp + fp), tp / (tp + fn)
    return {
        "true_positives": tp,
        "false_positives": fp,
        "false_negatives": fn,
        "precision": precision,
        "recall": recall,
        "f1": 2 * precision * recall / (precision + recall),
        "iou": tp / (tp + fp + fn),
        "dice": 2 * tp / (2 * tp + fp + fn),
    }


def assert_row(row: dict, expected: dict) -> None:
    for key, value in expected.items():
        assert row[key] == pytest.approx(value, rel=1e-12), key


def evaluate_cli(*args):
    """The command line in its own process."""
    return run_cli("evaluate", *args, "--quiet")


def evaluate_in_process(capsys, *args) -> tuple[int, str, str]:
    """The same command line in this process (exit code, stdout, stderr): for the many variations, fast."""
    code = main(["evaluate", *map(str, args), "--quiet"])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def cell(tmp_path, rng):
    """Labels, masks and a prediction on differently placed, differently chunked datasets of one 5 nm grid.

    The prediction (offset (10, 100, 50) nm, 20 x 150 x 140 voxels in chunks of 32: 4 blocks of 128^3) lies
    inside the labels (offset 0, 24 x 170 x 160, chunks 64) and masks (their own offsets and chunks)."""
    shape = (24, 170, 160)
    labels = (ndimage.gaussian_filter(rng.random(shape), 2) > 0.52) * rng.integers(1, 4, shape)
    inner = (slice(2, 22), slice(20, 170), slice(10, 150))  # the prediction's region, in label voxels
    noise = ndimage.gaussian_filter(rng.random(shape), 1.5)[inner]
    probabilities = np.clip((labels[inner] > 0) * 140 + (noise - 0.5) * 1500 + 60, 0, 255).astype(np.uint8)
    metric = (rng.random((22, 160, 150)) > 0.1).astype(np.uint8)  # offset (10, 50, 50) nm
    cell_mask = np.zeros((20, 150, 145), np.uint8)  # offset (10, 100, 50) nm
    cell_mask[:, 10:140, 5:130] = 1
    paths = {
        "labels": write_dataset(tmp_path / "c.zarr/volumes/labels/mito", labels.astype(np.uint16), chunk=64),
        "metric": write_dataset(tmp_path / "c.zarr/volumes/metric_masks/mito", metric, chunk=48, offset=(10, 50, 50)),
        "mask": write_dataset(tmp_path / "c.zarr/volumes/masks/cell", cell_mask, chunk=64, offset=(10, 100, 50)),
        "probabilities": write_dataset(tmp_path / "p.zarr/probabilities", probabilities, offset=(10, 100, 50)),
        "segmentation": write_dataset(
            tmp_path / "p.zarr/segmentation", (probabilities > 127).astype(np.uint8), offset=(10, 100, 50)
        ),
    }
    update_dataset_meta(paths["probabilities"], kind="probabilities")
    update_dataset_meta(paths["segmentation"], kind="labels")
    truth = labels[inner] > 0
    counted = (metric[:20, 10:160, :140] > 0) & (cell_mask[:, :, :140] > 0)
    return paths, probabilities, truth, counted


def confusion(predicted: np.ndarray, truth: np.ndarray, counted: np.ndarray | None) -> dict[str, int]:
    """The direct numpy computation: TP, FP, FN among counted voxels (all without a mask; foreground = nonzero)."""
    counted = np.ones(predicted.shape, bool) if counted is None else counted
    predicted, truth = predicted.astype(bool) & counted, truth.astype(bool) & counted
    return {
        "true_positives": int(np.count_nonzero(predicted & truth)),
        "false_positives": int(np.count_nonzero(predicted & ~truth)),
        "false_negatives": int(np.count_nonzero(~predicted & truth)),
    }


def test_histograms_give_the_confusion_counts_of_every_threshold(rng):
    predicted = rng.integers(0, 256, (9, 10, 11), dtype=np.uint8)
    truth = rng.integers(0, 3, predicted.shape).astype(np.uint16)
    counted = rng.random(predicted.shape) > 0.3
    for mask in (None, counted):
        histograms = value_histograms(predicted, truth, mask)
        assert histograms.sum() == (predicted.size if mask is None else counted.sum())
        for threshold in (0.0, 0.2, 0.35, 0.5, 0.999):
            assert threshold_counts(histograms, threshold) == confusion(predicted > threshold * 255, truth, mask)


def test_overlap_scores_follow_the_definitions_and_the_empty_rule():
    scores = overlap_scores({"true_positives": 6, "false_positives": 2, "false_negatives": 4})
    assert scores == pytest.approx({"precision": 0.75, "recall": 0.6, "f1": 2 / 3, "iou": 0.5, "dice": 2 / 3})
    nothing = overlap_scores({"true_positives": 0, "false_positives": 0, "false_negatives": 0})
    assert nothing == {"precision": 1.0, "recall": 1.0, "f1": 1.0, "iou": 1.0, "dice": 1.0}
    assert overlap_scores({"true_positives": 0, "false_positives": 3, "false_negatives": 0})["iou"] == 0.0


@pytest.mark.parametrize(
    "text, thresholds",
    [
        ("0.3:0.7:0.05", [0.3, 0.35, 0.4, 0.45, 0.5, 0.55, 0.6, 0.65, 0.7]),
        ("0.5", [0.5]),
        ("0.7,0.2,0.7", [0.2, 0.7]),
        ("0:0.2:0.1", [0.0, 0.1, 0.2]),
    ],
)
def test_threshold_specs(text, thresholds):
    assert parse_thresholds(text) == thresholds


def test_blocks_tile_the_region_on_the_chunk_grid(tmp_path):
    volume = create_dataset(
        DatasetPath.parse(tmp_path / "c.zarr/p"),
        (40, 300, 270),
        to_world((5, 5, 5)),
        to_world((0, 5, 10)),
        "u1",
        (16,) * 3,
    )
    roi = Roi(to_world((15, 25, 30)), to_world((150, 1400, 1300)))

    blocks = evaluation_blocks(roi, volume)

    assert len(blocks) == 1 * 3 * 3 and sum(block.size for block in blocks) == roi.size
    assert all(roi.contains(block) for block in blocks)
    for block in blocks:
        start = (block.begin - volume.offset) / volume.voxel_size
        assert all(s % 128 == 0 or b == r for s, b, r in zip(start, block.begin, roi.begin)), block


def test_segmentation_with_masks_against_numpy(tmp_path, cell):
    paths, probabilities, truth, counted = cell
    out = tmp_path / "results/seg.json"

    result = evaluate_cli(
        "--prediction", paths["segmentation"], "--labels", paths["labels"], "--metric-mask", paths["metric"],
        "--mask", paths["mask"], "--json", out, "--threads", 2,
    )  # fmt: skip

    assert result.returncode == 0, result.stderr
    saved = json.loads(out.read_text())
    assert saved["kind"] == "segmentation" and len(saved["results"]) == 1
    everything = np.ones_like(truth)
    assert_row(saved["results"][0], expected_scores(probabilities > 127, truth, everything))  # the field's metric
    assert saved["counted_voxels"] == saved["voxels"] == truth.size
    asem = saved["exclusion_zone"]
    assert_row(asem["results"][0], expected_scores(probabilities > 127, truth, counted))  # ASEM's
    assert asem["counted_voxels"] == counted.sum() and asem["label_foreground_voxels"] == (truth & counted).sum()
    assert "every voxel" in saved["metric"] and "exclusion zone" in asem["metric"]
    assert 0.5 < saved["best"]["f1"] < 0.99  # a real, imperfect prediction
    assert saved["best"]["f1"] != asem["best"]["f1"]
    for scored in (saved, asem):
        assert f"{scored['best']['f1']:.4f}" in result.stdout
    assert "best F1" not in result.stdout
    assert "The field's metric: every voxel" in result.stdout and "ASEM's metric" in result.stdout


def test_probability_sweep_with_roi_against_numpy(tmp_path, cell):
    paths, probabilities, truth, counted = cell
    out = tmp_path / "sweep.json"

    result = evaluate_cli(
        "--prediction", paths["probabilities"], "--labels", paths["labels"], "--metric-mask", paths["metric"],
        "--mask", paths["mask"], "--roi", 3, 7, 11, 15, 130, 120, "--thresholds", "0.3:0.7:0.05", "--json", out,
    )  # fmt: skip

    assert result.returncode == 0, result.stderr
    saved = json.loads(out.read_text())
    region = (slice(3, 18), slice(7, 137), slice(11, 131))
    assert saved["roi"]["offset_nm"] == [25, 135, 105] and saved["roi"]["shape_voxels"] == [15, 130, 120]
    asem = saved["exclusion_zone"]
    assert [row["threshold"] for row in asem["results"]] == [0.3, 0.35, 0.4, 0.45, 0.5, 0.55, 0.6, 0.65, 0.7]
    for everything, row in zip(saved["results"], asem["results"]):
        predicted = probabilities[region] > row["threshold"] * 255
        assert_row(row, expected_scores(predicted, truth[region], counted[region]))
        assert_row(everything, expected_scores(predicted, truth[region], np.ones_like(truth[region])))
    best = max(asem["results"], key=lambda row: row["f1"])
    assert asem["best"] == best and 0.3 < best["threshold"] < 0.7  # an interior optimum
    best_lines = [line for line in result.stdout.splitlines() if "<- best F1" in line]
    assert len(best_lines) == 2 and best_lines[1].split()[0] == f"{best['threshold']:g}"


def test_probabilities_flag_and_default_sweep(tmp_path, cell, capsys):
    paths, probabilities, truth, counted = cell
    unmarked = write_dataset(tmp_path / "q.zarr/prob", probabilities, offset=(10, 100, 50))
    out = tmp_path / "flag.json"

    code, _, err = evaluate_in_process(
        capsys, "--prediction", unmarked, "--labels", paths["labels"], "--probabilities", "--json", out
    )

    assert code == 0, err
    rows = json.loads(out.read_text())["results"]
    assert [row["threshold"] for row in rows] == [round(0.05 * i, 10) for i in range(1, 20)]
    everything = np.ones_like(truth)
    assert_row(rows[9], expected_scores(probabilities > 0.5 * 255, truth, everything))


def test_labels_without_foreground_say_so(tmp_path, cell, capsys):
    paths, probabilities, truth, _ = cell
    empty = write_dataset(tmp_path / "e.zarr/labels", np.zeros_like(truth, np.uint8), offset=(10, 100, 50))

    code, out, err = evaluate_in_process(capsys, "--prediction", paths["segmentation"], "--labels", empty)

    assert code == 0, err
    assert "label foreground 0 (0.0% of counted)" in out
    assert "note: the labels hold no foreground here, so recall and F1 are 1 only where nothing is predicted" in out


def test_real_crop_perturbed_labels_against_numpy(tmp_path, capsys):
    """Lucchi mito labels vs a shifted, dilated copy (segmentation) and a blurred copy (probabilities)."""
    labels_path = tmp_path / "lucchi.zarr/volumes/labels/mito"
    converted = run_cli("convert", SAMPLE_MITO, labels_path, "--voxel-size", 5, 5, 5, "--labels", "--quiet")
    assert converted.returncode == 0, converted.stderr
    truth = read_dataset(labels_path) > 0
    shifted = ndimage.shift(truth.astype(np.uint8), (1, 4, -3), order=0) > 0
    segmentation = ndimage.binary_dilation(shifted, iterations=1)
    probabilities = (ndimage.gaussian_filter(shifted.astype(float), 2) * 255).round().astype(np.uint8)
    counted = metric_mask(truth.view(np.uint8), 1, 1) > 0  # a thin exclusion zone
    metric_path = write_dataset(tmp_path / "lucchi.zarr/volumes/metric_masks/mito", counted.astype(np.uint8), chunk=64)
    seg_path = write_dataset(tmp_path / "lucchi.zarr/seg", segmentation.astype(np.uint8), chunk=64)
    prob_path = write_dataset(tmp_path / "lucchi.zarr/prob", probabilities, chunk=64)
    update_dataset_meta(prob_path, kind="probabilities")

    result = evaluate_cli(
        "--prediction", seg_path, "--labels", labels_path, "--metric-mask", metric_path, "--json", tmp_path / "seg",
    )  # fmt: skip
    code, _, err = evaluate_in_process(
        capsys, "--prediction", prob_path, "--labels", labels_path, "--metric-mask", metric_path,
        "--thresholds", "0.2,0.5,0.8", "--json", tmp_path / "prob", "--threads", 1,
    )  # fmt: skip

    assert result.returncode == 0 and code == 0, result.stderr + err
    seg = json.loads((tmp_path / "seg").read_text())["exclusion_zone"]["results"][0]
    assert_row(seg, expected_scores(segmentation, truth, counted))
    assert 0.8 < seg["f1"] < 0.95 and seg["precision"] < seg["recall"]  # dilation: more false positives
    for row in json.loads((tmp_path / "prob").read_text())["exclusion_zone"]["results"]:
        assert_row(row, expected_scores(probabilities > row["threshold"] * 255, truth, counted))


@pytest.mark.parametrize(
    "case, message",
    [
        ("missing prediction", "p.zarr/missing: no such dataset"),
        ("float prediction", "dtype float32; evaluate needs a uint8 prediction"),
        ("coarser labels", "(labels): voxel size (10, 10, 10) nm differs from the prediction's (5, 5, 5) nm"),
        ("shifted labels", "(labels): covers offset (0, 150, 50) nm, shape (24, 170, 160) voxels, not all"),
        ("roi outside", "--roi offset (0, 0, 0) shape (21, 10, 10) (voxels) lies outside"),
        ("bad syntax", "--thresholds '0.3-0.7': write START:STOP:STEP"),
        ("threshold 1", "--thresholds '0.5:1:0.25': 1.0 is outside [0, 1)"),
        ("sweep of a segmentation", "is a segmentation (recorded kind 'labels'); drop --thresholds"),
        ("unmarked probabilities", "so it is no 0/1 segmentation; pass --probabilities if it is a probability map"),
        ("nothing counts", "counts: the metric mask and cell mask are 0 everywhere in it"),
        ("existing json", "already exists; pass --overwrite"),
    ],
)
def test_bad_input_fails_with_one_line(tmp_path, cell, capsys, case, message):
    paths, probabilities, *_ = cell
    prediction, labels, extra = paths["segmentation"], paths["labels"], []
    if case == "missing prediction":
        prediction = tmp_path / "p.zarr/missing"
    elif case == "float prediction":
        prediction = write_dataset(tmp_path / "p.zarr/f", probabilities.astype(np.float32), offset=(10, 100, 50))
    elif case == "coarser labels":
        labels = DatasetPath.parse(tmp_path / "c.zarr/coarse")
        create_dataset(labels, (12, 90, 90), to_world((10, 10, 10)), (0, 0, 0), "u1")
        update_dataset_meta(labels, complete=True)
    elif case == "shifted labels":
        labels = write_dataset(tmp_path / "c.zarr/shifted", np.zeros((24, 170, 160), np.uint8), offset=(0, 150, 50))
    elif case == "roi outside":
        extra = ["--roi", 0, 0, 0, 21, 10, 10]
    elif case == "bad syntax":
        extra = ["--thresholds", "0.3-0.7"]
    elif case == "threshold 1":
        prediction, extra = paths["probabilities"], ["--thresholds", "0.5:1:0.25"]
    elif case == "sweep of a segmentation":
        extra = ["--thresholds", "0.5"]
    elif case == "unmarked probabilities":
        prediction = write_dataset(tmp_path / "p.zarr/unmarked", probabilities, offset=(10, 100, 50))
    elif case == "nothing counts":
        empty = write_dataset(tmp_path / "c.zarr/empty", np.zeros((20, 150, 140), np.uint8), offset=(10, 100, 50))
        extra = ["--metric-mask", empty]
    out = tmp_path / "out.json"
    if case == "existing json":
        out.write_text("{}")

    code, out_text, err = evaluate_in_process(
        capsys, "--prediction", prediction, "--labels", labels, *extra, "--json", out
    )

    assert code == 2, out_text + err
    assert message in err and len(err.strip().splitlines()) == 1, err
    assert (out.read_text() == "{}") if case == "existing json" else not out.exists()


def test_bad_input_exits_with_2_from_the_command_line(tmp_path):
    result = evaluate_cli("--prediction", tmp_path / "p.zarr/missing", "--labels", tmp_path / "c.zarr/labels")
    assert result.returncode == 2 and result.stderr.startswith("incasem-like: error: ")
    assert "p.zarr/missing: no such dataset" in result.stderr and len(result.stderr.splitlines()) == 1


@pytest.mark.parametrize(
    "text, message",
    [
        ("0.7:0.3:0.1", "STEP must be positive and STOP at least START"),
        ("0.3:0.7", "write START:STOP:STEP (e.g. 0.3:0.7:0.05, STOP included) or values separated by commas"),
        ("0.5,high", "or values separated by commas (e.g. 0.3,0.5)"),
        ("-0.1,0.5", "-0.1 is outside [0, 1)"),
    ],
)
def test_bad_threshold_specs_name_the_fix(text, message):
    with pytest.raises(UserError, match=re.escape(message)):
        parse_thresholds(text)
