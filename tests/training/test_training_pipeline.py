import numpy as np
import pytest
from scipy import ndimage

from incasem_like.core.errors import UserError
from incasem_like.training.config import TrainConfig, open_cells
from incasem_like.training.loss import balanced_weights
from incasem_like.training.pipeline import BatchSource, batch_stream, cell_probabilities
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
