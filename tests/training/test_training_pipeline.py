import gunpowder as gp
import numpy as np
import pytest
import torch
from scipy import ndimage

from incasem_like.core.errors import UserError
from incasem_like.core.geometry import Coordinate
from incasem_like.nn.model import NetworkConfig, UNet3D
from incasem_like.nn.normalization import IntensityRange
from incasem_like.training.config import TrainConfig, open_cells
from incasem_like.training.loss import balanced_weights, loss_weights, training_loss
from incasem_like.training.pipeline import BatchSource, annotated_voxels, batch_stream, cell_probabilities
from incasem_like.training.train import ValidationCell, validate
from tests.conftest import write_dataset
from tests.training_data import TINY_NETWORK, sample_cell, sample_stack

#: a network used only for its shapes here: input 44 -> output 38
SHAPES_ONLY = {"feature_maps": 1, "downsamplings": 0, "input_shape": [44, 44, 44]}
NO_AUGMENTATION = {"mirror_transpose": False, "elastic": None, "intensity": None}
NO_REJECTION = {"max_outside_mask": 1.0, "min_foreground": 0.0}


def blobs(shape, seed=0, size=4.0, fraction=0.5) -> np.ndarray:
    """A random 0/1 pattern of blobs about `size` voxels across, `fraction` of it foreground."""
    noise = ndimage.gaussian_filter(np.random.default_rng(seed).normal(size=shape), size)
    return (noise > np.quantile(noise, 1 - fraction)).astype(np.uint8)


def config(training, **fields) -> TrainConfig:
    values = {"organelle": "mito", "run_dir": "unused", "network": SHAPES_ONLY, "training": training}
    values.update(data_workers=0, device="cpu", sampling=NO_REJECTION, augmentation=NO_AUGMENTATION)
    return TrainConfig.model_validate({**values, **fields})


@pytest.fixture
def pattern_cell(tmp_path):
    """Raw and labels showing the same blobs: raw 220 on foreground, 20 on background."""
    pattern = blobs((60, 100, 100))
    write_dataset(tmp_path / "c.zarr/volumes/raw", (pattern * 200 + 20).astype(np.uint8))
    write_dataset(tmp_path / "c.zarr/volumes/labels", pattern)
    return {"container": str(tmp_path / "c.zarr"), "raw": "volumes/raw", "labels": "volumes/labels"}


def raw_matches_labels(batch, shift=0) -> float:
    """Share of counted output voxels (inside the data, not padding) of the batch's first sample where raw
    (centre-cropped, thresholded half-way) shows the labels' class."""
    raw, labels, weights = batch["raw"][0], batch["labels"][0], batch["weights"][0]
    context = [(r - label) // 2 for r, label in zip(raw.shape, labels.shape)]
    crop = tuple(slice(c + shift, c + shift + s) for c, s in zip(context, labels.shape))
    agree = (raw[crop] > (120 / 255) * 2 - 1) == (labels > 0)
    return float(np.mean(agree[weights > 0]))


def test_augmented_raw_and_labels_stay_aligned(pattern_cell):
    augmentation = {"mirror_transpose": True, "elastic": {"jitter_sigma": 2, "subsample": 4}, "intensity": None}
    source = BatchSource(config([pattern_cell], augmentation=augmentation))
    try:
        batches = [source.batch(i) for i in range(8)]
    finally:
        source.close()
    for batch in batches:
        assert batch["raw"].shape == (1, 44, 44, 44) and batch["labels"].shape == (1, 38, 38, 38)  # (N, z, y, x)
        assert raw_matches_labels(batch) > 0.97
        assert raw_matches_labels(batch, shift=2) < 0.85  # the check notices a 2-voxel misalignment
    # the augmentation did something: batches differ from plain crops in orientation and deformation
    assert len({batch["labels"].tobytes() for batch in batches}) == len(batches)


def test_foreground_rejection_follows_the_configured_probability(tmp_path):
    labels = np.zeros((40, 100, 300), dtype=np.uint8)
    labels[:, :, :60] = blobs((40, 100, 60), fraction=0.5)  # foreground only at one end
    write_dataset(tmp_path / "c.zarr/volumes/raw", (labels * 200 + 20).astype(np.uint8))
    write_dataset(tmp_path / "c.zarr/volumes/labels", labels)
    cell = {"container": str(tmp_path / "c.zarr"), "raw": "volumes/raw", "labels": "volumes/labels"}
    low = {}
    for probability in (0.0, 1.0):
        sampling = {"max_outside_mask": 1.0, "min_foreground": 0.05, "reject_probability": probability}
        source = BatchSource(config([cell], sampling=sampling))
        try:
            fractions = [source.batch(i)["labels"].mean() for i in range(30)]
        finally:
            source.close()
        low[probability] = np.mean([f <= 0.05 for f in fractions])
    assert low[1.0] == 0  # every block with <= 5% foreground is rejected
    assert low[0.0] > 0.4  # without rejection most random blocks miss the foreground end


def test_a_rejected_location_reads_no_raw_and_an_accepted_one_reads_it_where_the_labels_are(tmp_path, monkeypatch):
    labels = np.zeros((40, 100, 300), dtype=np.uint8)
    labels[:, :, :60] = blobs((40, 100, 60), fraction=0.5)  # foreground only at one end: most locations rejected
    write_dataset(tmp_path / "c.zarr/volumes/raw", (labels * 200 + 20).astype(np.uint8))
    write_dataset(tmp_path / "c.zarr/volumes/labels", labels)
    cell = {"container": str(tmp_path / "c.zarr"), "raw": "volumes/raw", "labels": "volumes/labels"}
    reads: list[str] = []
    provide = gp.ArraySource.provide
    monkeypatch.setattr(
        gp.ArraySource, "provide", lambda node, request: reads.append(str(node.key)) or provide(node, request)
    )
    sampling = {"max_outside_mask": 1.0, "min_foreground": 0.05, "reject_probability": 1.0}
    source = BatchSource(config([cell], sampling=sampling))
    try:
        batches = [source.batch(i) for i in range(10)]
    finally:
        source.close()
    assert reads.count("RAW") == 10 and reads.count("LABELS") > 20  # a probe and a read per sample, and rejections
    assert min(raw_matches_labels(batch) for batch in batches) == 1.0


def test_blocks_mostly_outside_the_cell_mask_are_rejected(tmp_path, pattern_cell):
    mask = np.zeros((60, 100, 100), dtype=np.uint8)
    mask[:, :, :50] = 1
    write_dataset(tmp_path / "c.zarr/volumes/mask", mask)
    cell = {**pattern_cell, "mask": "volumes/mask"}
    inside = {}
    for allowed in (1.0, 0.25):
        source = BatchSource(config([cell], sampling={"max_outside_mask": allowed, "min_foreground": 0.0}))
        try:
            inside[allowed] = [np.mean(source.batch(i)["weights"] > 0) for i in range(20)]
        finally:
            source.close()
    assert min(inside[0.25]) > 0.75  # weights are 0 exactly outside the mask here
    assert min(inside[1.0]) < 0.75


def test_a_cell_without_an_acceptable_location_warns_then_fails_naming_the_fix(tmp_path, pattern_cell, caplog):
    mask = np.zeros((60, 100, 100), dtype=np.uint8)
    mask[:, :, :10] = 1  # no 38^3 block is 75% inside
    write_dataset(tmp_path / "c.zarr/volumes/mask", mask)
    sampling = {"max_outside_mask": 0.25, "min_foreground": 0.0, "max_attempts": 150}
    source = BatchSource(config([{**pattern_cell, "mask": "volumes/mask"}], sampling=sampling))
    try:
        with pytest.raises(UserError) as refused:
            source.batch(0)
    finally:
        source.close()
    assert str(refused.value).startswith("training[0]: share of a sample inside the cell mask: no acceptable sample")
    assert "in 150 random locations" in str(refused.value) and "raise sampling.max_outside_mask" in str(refused.value)
    assert "100 samples rejected in a row" in caplog.text


def test_class_weights_balance_and_clip():
    labels = np.zeros(1000, dtype=np.uint8)
    labels[:100] = 1
    counted = np.ones(1000, dtype=bool)
    counted[-200:] = False
    weights = balanced_weights(labels, counted)
    assert weights[~counted].sum() == 0
    assert weights[labels == 1].sum() == pytest.approx(weights[(labels == 0) & counted].sum())
    assert weights[counted].mean() == pytest.approx(1.0)
    rare = np.zeros(10_000, dtype=np.uint8)
    rare[:2] = 1  # 1:5000, clipped to 1:100
    weights = balanced_weights(rare, np.ones_like(rare, dtype=bool), max_class_ratio=100)
    assert weights[0] / weights[-1] == pytest.approx(100)
    assert balanced_weights(rare, np.zeros_like(rare, dtype=bool)).sum() == 0


def test_batches_do_not_depend_on_the_number_of_data_workers(tmp_path):
    cell = sample_cell(tmp_path / "cell.zarr")
    augmentation = {"mirror_transpose": True, "elastic": {}, "intensity": {}}
    serial = list(batch_stream(config([cell], network=TINY_NETWORK, augmentation=augmentation), 3, 7, [1.0]))
    parallel_config = config([cell], network=TINY_NETWORK, augmentation=augmentation, data_workers=2)
    parallel = list(batch_stream(parallel_config, 3, 7, [1.0]))
    assert [b["iteration"] for b in parallel] == [3, 4, 5, 6]
    for a, b in zip(serial, parallel):
        for key in ("raw", "labels", "weights"):
            np.testing.assert_array_equal(a[key], b[key])


def test_volume_thinner_than_the_input_trains(tmp_path):
    cell = sample_cell(tmp_path / "cell.zarr", shape=(12, 64, 64))  # 12 slices, network input 28
    source = BatchSource(config([cell], network=TINY_NETWORK))
    try:
        batch = source.batch(0)
    finally:
        source.close()
    assert batch["raw"].shape == (1, 28, 28, 28) and batch["labels"].shape == (1, 10, 10, 10)
    assert np.isfinite(batch["raw"]).all()


def test_cells_are_drawn_by_labelled_volume(tmp_path):
    first = sample_cell(tmp_path / "a.zarr", shape=(40, 96, 96))
    second = sample_cell(tmp_path / "b.zarr", shape=(40, 96, 96))
    second["roi"] = {"offset": [0, 0, 0], "shape": [38, 96, 96]}
    third = {**sample_cell(tmp_path / "c.zarr", shape=(40, 96, 96)), "labels": "volumes/none"}
    write_dataset(tmp_path / "c.zarr/volumes/none", np.zeros((40, 96, 96), dtype=np.uint8))
    cells, _ = open_cells(config([first, second, third]))
    labelled = [np.count_nonzero(sample_stack("mito", (n, 96, 96))) for n in (40, 38)]
    assert cell_probabilities(cells) == pytest.approx([labelled[0] / sum(labelled), labelled[1] / sum(labelled), 0])


def test_training_roi_smaller_than_the_output_is_refused(tmp_path):
    cell = sample_cell(tmp_path / "cell.zarr", shape=(20, 64, 64))
    with pytest.raises(UserError, match=r"training\[0\]\.roi: shape \[20, 30, 64\].*smaller than the network output"):
        BatchSource(config([{**cell, "roi": {"offset": [0, 0, 0], "shape": [20, 30, 64]}}]))


ANNOTATED_SLICES = "2:40:6"


def sparse_cells(tmp_path) -> tuple[dict, dict]:
    """A sample cell annotated on every 6th slice, and the same cell whose unannotated slices hold other labels."""
    cell = sample_cell(tmp_path / "cell.zarr")
    labels = sample_stack("mito", (40, 96, 96)) > 0
    changed = blobs((40, 96, 96), seed=3)
    changed[2::6] = labels[2::6]
    write_dataset(tmp_path / "cell.zarr/volumes/changed", changed)
    sparse = {**cell, "annotated_slices": ANNOTATED_SLICES}
    return sparse, {**sparse, "labels": "volumes/changed"}


def batches_of(cell, count=4, **fields) -> list[dict]:
    source = BatchSource(config([cell], network=TINY_NETWORK, **fields))
    try:
        return [source.batch(i) for i in range(count)]
    finally:
        source.close()


def loss_and_gradients(batch) -> tuple[float, list[np.ndarray]]:
    torch.manual_seed(0)
    model = UNet3D(NetworkConfig.model_validate(TINY_NETWORK))
    raw, labels, weights = (torch.from_numpy(batch[key])[:, None] for key in ("raw", "labels", "weights"))
    loss = training_loss("balanced_bce", model(raw), labels, weights)
    loss.backward()
    return float(loss), [p.grad.numpy().copy() for p in model.parameters()]


def test_unannotated_voxels_carry_no_weight_and_changing_them_changes_no_loss_or_gradient(tmp_path):
    """With every augmentation and rejection: the cell and the same cell with other labels off its annotated
    slices give the same batches, losses and gradients."""
    sparse, changed = sparse_cells(tmp_path)
    augmentation = {"mirror_transpose": True, "elastic": {}, "intensity": {}}
    sampling = {"min_foreground": 0.05, "reject_probability": 0.9}
    first, second = (batches_of(cell, augmentation=augmentation, sampling=sampling) for cell in (sparse, changed))
    dense = batches_of({key: value for key, value in changed.items() if key != "annotated_slices"},
                       augmentation=augmentation, sampling=sampling)  # fmt: skip
    for a, b, c in zip(first, second, dense):
        for key in ("raw", "labels", "weights"):
            np.testing.assert_array_equal(a[key], b[key])
        loss_a, gradients_a = loss_and_gradients(a)
        loss_b, gradients_b = loss_and_gradients(b)
        assert loss_a == loss_b
        for gradient_a, gradient_b in zip(gradients_a, gradients_b):
            np.testing.assert_array_equal(gradient_a, gradient_b)
        assert (a["weights"] > 0).mean() < 0.5 * (c["weights"] > 0).mean()  # the check sees dense labels


def test_only_annotated_slices_count_and_class_balance_counts_them_alone(tmp_path):
    """Raw holding each slice's index tells where a sample lies: its weights are 0 off the annotated slices, and
    on them those of class balancing over the counted (annotated, inside the cell) voxels alone."""
    sparse, _ = sparse_cells(tmp_path)
    ramp = np.broadcast_to(np.arange(40, dtype=np.uint8)[:, None, None], (40, 96, 96))
    write_dataset(tmp_path / "cell.zarr/volumes/z", ramp)
    for batch in batches_of({**sparse, "raw": "volumes/z"}):
        context = (batch["raw"].shape[1] - batch["labels"].shape[1]) // 2
        slices = np.rint((batch["raw"][0, context:-context, 0, 0] + 1) / 2 * 255).astype(int)
        weights, labels = batch["weights"][0], batch["labels"][0]
        on_annotated = np.isin(slices, range(2, 40, 6))
        assert on_annotated.any() and weights[~on_annotated].sum() == 0
        counted = weights > 0
        assert counted[on_annotated].any()
        np.testing.assert_array_equal(weights, loss_weights("balanced_bce", labels, counted, 100.0))


def test_rejection_asks_for_foreground_among_the_annotated_voxels(tmp_path):
    """Foreground everywhere but on the annotated slices: a dense cell would pass, the sparse one finds no sample
    with foreground where it is annotated."""
    cell = sample_cell(tmp_path / "cell.zarr")
    labels = np.ones((40, 96, 96), np.uint8)
    labels[2::6] = 0
    write_dataset(tmp_path / "cell.zarr/volumes/inverse", labels)
    sampling = {"min_foreground": 0.05, "reject_probability": 1.0, "max_attempts": 20}
    inverse = {**cell, "labels": "volumes/inverse"}
    assert batches_of(inverse, count=1, sampling=sampling)
    with pytest.raises(UserError, match=r"training\[0\]: foreground share of a sample \(of its annotated voxels\)"):
        batches_of({**inverse, "annotated_slices": ANNOTATED_SLICES}, count=1, sampling=sampling)


def test_an_annotated_mask_and_an_unannotated_label_value_mark_what_is_annotated(tmp_path):
    cell = sample_cell(tmp_path / "cell.zarr")
    labels = sample_stack("mito", (40, 96, 96)) > 0
    marked = labels.astype(np.uint8)
    marked[:, :, 48:] = 255  # right half unsure
    region = np.zeros((40, 96, 96), np.uint8)
    region[:, :60] = 1
    write_dataset(tmp_path / "cell.zarr/volumes/marked", marked)
    write_dataset(tmp_path / "cell.zarr/volumes/region", region)
    sparse = {**cell, "labels": "volumes/marked", "unannotated_label": 255, "annotated": "volumes/region"}
    cells, _ = open_cells(config([sparse]))
    roi = cells[0].roi
    annotated = cells[0].annotation(roi, marked, region)
    assert annotated.sum() == 40 * 60 * 48 and annotated[:, :60, :48].all()
    assert cell_probabilities(cells) == [1.0]
    assert annotated_voxels(cells[0]) == (40 * 60 * 48, int(labels[:, :60, :48].sum()))
    for batch in batches_of(sparse, count=2):
        assert batch["labels"].max() <= 1


def test_validation_on_sparse_ground_truth_counts_annotated_voxels_only(tmp_path):
    sparse, changed = sparse_cells(tmp_path)
    cells = [open_cells(config([cell]))[0][0] for cell in (sparse, changed)]
    loaded = [ValidationCell.load(cell, Coordinate((9, 9, 9)), IntensityRange(0, 255, False)) for cell in cells]
    assert loaded[0].annotated.sum() == 7 * 96 * 96 and loaded[0].counted.sum() == 7 * 96 * 96
    for a, b in zip(loaded[0].__dict__.values(), loaded[1].__dict__.values()):
        if isinstance(a, np.ndarray):
            np.testing.assert_array_equal(a, b)
    model = UNet3D(NetworkConfig.model_validate(TINY_NETWORK)).eval()
    result = validate(model, loaded[:1], torch.device("cpu"), config([sparse]), TINY_NETWORK["input_shape"])
    total = sum(result[key] for key in ("true_positives", "false_positives", "false_negatives"))
    assert 0 < total <= 7 * 96 * 96
