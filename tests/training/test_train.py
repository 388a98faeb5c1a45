import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from incasem_like.core.errors import UserError
from incasem_like.core.geometry import to_world
from incasem_like.nn.checkpoints import (
    checkpoints,
    export_weights,
    load_checkpoint,
    model_from_checkpoint,
    resolve_checkpoint,
    save_checkpoint,
)
from incasem_like.nn.model import NetworkConfig, UNet3D
from incasem_like.nn.models import bundled_model
from incasem_like.store.datasets import open_dataset
from incasem_like.training.config import Optimizer, load_config
from incasem_like.training.train import finetune, train
from tests.conftest import REPO, run_cli, run_cli_in_process, write_dataset
from tests.training_data import TINY_NETWORK, sample_cell, sample_stack, write_config


@pytest.fixture
def cell(tmp_path):
    return sample_cell(tmp_path / "cell.zarr", shape=(40, 96, 96))


def validation_of(cell, z0=28):
    return {**cell, "roi": {"offset": [z0, 0, 0], "shape": [40 - z0, 96, 96]}}


def training_of(cell, z1=28):
    return {**cell, "roi": {"offset": [0, 0, 0], "shape": [z1, 96, 96]}}


def test_a_few_iterations_lower_the_loss(tmp_path, cell):
    """Fitting one fixed region without augmentation: the loss falls."""
    path = write_config(
        tmp_path / "c.yaml",
        tmp_path / "run",
        [training_of(cell)],
        iterations=40,
        checkpoint_every=40,
        snapshot_every=40,
        augmentation={"mirror_transpose": False, "elastic": None, "intensity": None},
        sampling={"max_outside_mask": 1.0, "min_foreground": 0.0},
        optimizer={"learning_rate": 3e-3, "weight_decay": 0},
    )
    train(load_config(path), progress=False)
    events = _scalars(tmp_path / "run" / "tensorboard", "loss/train")
    assert len(events) == 40
    assert np.mean(events[-10:]) < 0.8 * np.mean(events[:10])


def _scalars(logdir, tag) -> list[float]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(logdir))
    accumulator.Reload()
    return [event.value for event in accumulator.Scalars(tag)]


def test_train_writes_checkpoints_validation_snapshots_and_summary(tmp_path, cell):
    path = write_config(
        tmp_path / "c.yaml",
        tmp_path / "run",
        [training_of(cell)],
        [validation_of(cell)],
        validation_input_shape=[28, 44, 44],  # larger validation passes than the training input
    )
    result = run_cli("train", path, "--quiet", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    run = tmp_path / "run"
    assert list(checkpoints(run)) == [2, 4]
    summary = json.loads((run / "summary.json").read_text())
    assert [v["iteration"] for v in summary["validation"]] == [0, 2, 4]
    assert all(0 <= v["f1"] <= v["best_threshold_f1"] <= 1 for v in summary["validation"])  # 0.5 is swept too
    swept = summary["best_at_swept_threshold"]
    assert 0 < swept["threshold"] < 1 and swept["f1"] >= max(v["f1"] for v in summary["validation"][1:]) - 1e-9
    assert summary["best"]["checkpoint"] in {str(p) for p in checkpoints(run).values()}
    assert "best validation F1" in result.stdout
    state = load_checkpoint(checkpoints(run)[4])
    assert state["iteration"] == 4 and state["organelle"] == "mito" and state["voxel_size"] == [5, 5, 5]
    snapshot = open_dataset(run / "snapshots.zarr" / "iteration_00000004" / "prediction")
    labels = open_dataset(run / "snapshots.zarr" / "iteration_00000004" / "labels")
    assert snapshot.roi == labels.roi and snapshot.dtype == np.float32
    assert set(_scalar_tags(run / "tensorboard")) >= {"loss/train", "validation/f1", "validation/loss"}


def _scalar_tags(logdir) -> list[str]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(logdir))
    accumulator.Reload()
    return accumulator.Tags()["scalars"]


def assert_resumed_run_equals_the_whole(tmp_path, cell, **options) -> Path:
    """Train 4 iterations in one go (run a) and 2 then `--resume` to 4 (run b): the weights are equal. The config
    of run b."""
    whole = write_config(tmp_path / "a.yaml", tmp_path / "a", [training_of(cell)], **options)
    half = write_config(tmp_path / "b.yaml", tmp_path / "b", [training_of(cell)], iterations=2, **options)
    assert run_cli("train", whole, "--quiet", cwd=tmp_path).returncode == 0
    assert run_cli("train", half, "--quiet", cwd=tmp_path).returncode == 0

    result = run_cli("train", half, "--resume", "--iterations", 4, "--quiet", cwd=tmp_path)

    assert result.returncode == 0, result.stderr
    a, b = (load_checkpoint(checkpoints(tmp_path / run)[4]) for run in ("a", "b"))
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    return half


@pytest.mark.slow  # heavy (~30 s): run in CI with -m slow, beside the real-data tests
def test_resume_continues_exactly(tmp_path, cell):
    augmentation = {"mirror_transpose": True, "elastic": {}, "intensity": {}}
    half = assert_resumed_run_equals_the_whole(tmp_path, cell, augmentation=augmentation)
    again = run_cli("train", half, "--quiet", cwd=tmp_path)
    assert again.returncode == 2 and "--resume" in again.stderr and "--overwrite" in again.stderr


@pytest.mark.slow  # heavy (~30 s): run in CI with -m slow, beside the real-data tests
def test_time_limit_stops_with_a_checkpoint_and_validation_then_resume_goes_on(tmp_path, cell):
    """Also under a cosine learning-rate schedule: stopped + resumed equals one uninterrupted run."""
    cosine = {"learning_rate": 1e-3, "schedule": "cosine", "final_learning_rate": 1e-5}
    limited = write_config(
        tmp_path / "c.yaml",
        tmp_path / "run",
        [training_of(cell)],
        [validation_of(cell)],
        max_minutes=0.001,
        optimizer=cosine,
    )

    result = run_cli("train", limited, "--quiet", cwd=tmp_path)

    assert result.returncode == 0, result.stderr
    assert "stopped at the time limit" in result.stdout
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["timing"]["stopped_at_time_limit"] and summary["iterations"] == 1
    assert list(checkpoints(tmp_path / "run")) == [1]
    assert [v["iteration"] for v in summary["validation"]] == [0, 1]
    unlimited = write_config(
        tmp_path / "c.yaml", tmp_path / "run", [training_of(cell)], [validation_of(cell)], optimizer=cosine
    )
    resumed = run_cli("train", unlimited, "--resume", "--quiet", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert list(checkpoints(tmp_path / "run"))[-1] == 4
    whole = write_config(tmp_path / "w.yaml", tmp_path / "whole", [training_of(cell)], optimizer=cosine)
    assert run_cli("train", whole, "--quiet", cwd=tmp_path).returncode == 0
    a, b = (load_checkpoint(checkpoints(tmp_path / run)[4]) for run in ("run", "whole"))
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    rates = _scalars(tmp_path / "whole" / "tensorboard", "learning_rate")
    assert rates == pytest.approx([1e-3, 0.75 * 1e-3 + 0.25 * 1e-5, 0.25 * 1e-3 + 0.75 * 1e-5, 1e-5])


def test_cosine_schedule_runs_from_the_rate_to_the_final_rate():
    optimizer = Optimizer(learning_rate=2e-4, schedule="cosine", final_learning_rate=2e-6)
    rates = [optimizer.learning_rate_at(i, 101) for i in range(1, 102)]
    assert rates[0] == pytest.approx(2e-4) and rates[50] == pytest.approx(1.01e-4) and rates[-1] == pytest.approx(2e-6)
    assert all(a > b for a, b in zip(rates, rates[1:]))
    assert Optimizer(learning_rate=2e-4).learning_rate_at(77, 101) == 2e-4


def test_finetune_reports_f1_before_and_after(tmp_path, cell):
    base = write_config(tmp_path / "a.yaml", tmp_path / "a", [training_of(cell)])
    assert run_cli("train", base, "--quiet", cwd=tmp_path).returncode == 0
    tune = write_config(tmp_path / "t.yaml", tmp_path / "t", [training_of(cell)], [validation_of(cell)])
    checkpoint = checkpoints(tmp_path / "a")[4]
    result = run_cli("finetune", tune, "--from", checkpoint, "--iterations", 2, "--quiet", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "validation F1 before" in result.stdout
    summary = json.loads((tmp_path / "t" / "summary.json").read_text())
    assert summary["finetuned_from"] == str(checkpoint)
    assert summary["finetune"]["best_iteration"] == 2
    assert summary["validation"][0]["f1"] == summary["finetune"]["f1_before"]


@pytest.mark.slow  # heavy (~30 s): run in CI with -m slow, beside the real-data tests
def test_finetune_refuses_a_checkpoint_of_another_architecture(tmp_path, cell):
    base = write_config(tmp_path / "a.yaml", tmp_path / "a", [training_of(cell)], iterations=2)
    assert run_cli("train", base, "--quiet", cwd=tmp_path).returncode == 0
    other = {"feature_maps": 6, "downsamplings": 1, "input_shape": [28, 28, 28]}
    tune = write_config(tmp_path / "t.yaml", tmp_path / "t", [training_of(cell)], [validation_of(cell)], network=other)
    result = run_cli("finetune", tune, "--from", checkpoints(tmp_path / "a")[2], "--quiet", cwd=tmp_path)
    assert result.returncode == 2
    assert "trained with network {'feature_maps': 4" in result.stderr and "'feature_maps': 6" in result.stderr
    assert not (tmp_path / "t").exists()


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda c: c["training"][0].update(labels="volumes/nothing"), r"training\[0\]\.labels: .*no such dataset"),
        (
            lambda c: c["training"][0].update(roi={"offset": [30, 0, 0], "shape": [20, 96, 96]}),
            r"training\[0\]\.roi: offset \[30, 0, 0\] shape \[20, 96, 96\].* outside",
        ),
        (lambda c: c.pop("organelle"), "organelle is missing"),
        (lambda c: c.update(iterationz=3), "iterationz"),
        (lambda c: c["network"].update(input_shape=[29, 29, 29]), "input edge 29 does not fit"),
        (
            lambda c: c["network"].update(normalization="instance"),
            "network.normalization = 'instance': instance normalization uses each tile's own statistics",
        ),
        (lambda c: c["network"].update(padding="same"), "network.padding = 'same': 'same' padding fills each tile"),
        (lambda c: c.update(loss="dice"), "loss = 'dice'"),
        (lambda c: c["training"][0].update(mask="volumes/coarse"), r"training\[0\]\.mask: voxel size \(10, 10, 10\)"),
        (
            lambda c: c["training"][0].update(annotated_slices="0:60:20"),
            r"training\[0\]\.annotated_slices: slice 40 lies beyond the 40 slices of .* along z",
        ),
        (
            lambda c: c["training"][0].update(annotated_slices="30, 35"),
            r"training\[0\]\.annotated_slices: none of them lies in the cell's ROI \(slices 0\.\.27 along z\)",
        ),
        (
            lambda c: c["training"][0].update(annotated_slices="0:20:0"),
            r"training\[0\]\.annotated_slices = '0:20:0': .*0:20:0: the step must be at least 1",
        ),
        (
            lambda c: c["training"][0].update(annotated="volumes/coarse_zero"),
            r"training\[0\]: no voxel of its roi is annotated",
        ),
        (
            lambda c: c["training"][0].update(raw="volumes/float"),
            r"training\[0\]\.raw: dtype float32 of .*float does not fit raw_normalization mode bit_depth",
        ),
        (
            lambda c: c.update(raw_normalization={"mode": "percentiles", "value_range": [0, 1]}),
            "raw_normalization = .*value_range \\[LOW, HIGH\\] is given with mode value_range, and only then",
        ),
        (
            lambda c: c.update(raw_normalization={"mode": "percentiles", "percentiles": [99, 1]}),
            r"raw_normalization = .*percentiles \[99.0, 1.0\]: the first must be below the second",
        ),
        (
            lambda c: c.update(optimizer={"schedule": "cosine", "learning_rate": 1e-4, "final_learning_rate": 1e-3}),
            "optimizer = .*final_learning_rate 0.001 exceeds learning_rate 0.0001",
        ),
    ],
)
def test_bad_configs_fail_with_one_line(tmp_path, cell, change, message, capsys):
    from incasem_like.store.datasets import DatasetPath, create_dataset, update_dataset_meta

    coarse = DatasetPath.parse(tmp_path / "cell.zarr/volumes/coarse")
    create_dataset(coarse, (20, 48, 48), to_world((10, 10, 10)), (0, 0, 0), np.uint8)
    update_dataset_meta(coarse, complete=True)
    write_dataset(tmp_path / "cell.zarr/volumes/float", np.zeros((40, 96, 96), np.float32))
    write_dataset(tmp_path / "cell.zarr/volumes/coarse_zero", np.zeros((40, 96, 96), np.uint8))
    path = write_config(
        tmp_path / "c.yaml", tmp_path / "run", [training_of(cell)], raw_normalization={"mode": "bit_depth"}
    )
    content = yaml.safe_load(path.read_text())
    change(content)
    path.write_text(yaml.safe_dump(content))
    result = run_cli_in_process(capsys, "train", path, "--quiet", cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert re.search(message, lines[0]), lines[0]
    assert not (tmp_path / "run").exists()


def test_shipped_configs_are_valid():
    from incasem_like.training.config import TrainConfig

    folder = REPO / "configs" / "training"
    paths = sorted(folder.rglob("*.yaml"))
    names = {p.stem for p in paths}
    assert {"mito", "er", "golgi", "nuclear_pore", "ccp", "lucchi_mito_cpu", "mito_gpu", "2d", "3d"} <= names
    for path in paths:
        config = TrainConfig.model_validate(yaml.safe_load(path.read_text()))
        config.network.output_shape()
        if config.validation_input_shape:
            config.network.output_shape(config.validation_input_shape)
    for organelle in ("mito", "er", "golgi", "nuclear_pore", "ccp"):  # the method's network and loss
        method = load_config(folder / f"{organelle}.yaml")
        assert method.network.parameter_count() == 5_836_865 and method.network.normalization == "none"
        assert method.loss == "balanced_bce" and method.batch_size == 1
    asem = load_config(folder / "mito.yaml")
    assert asem.optimizer.learning_rate == 3e-5 and asem.sampling.reject_probability == 0.9


def test_exported_float16_weights_predict_like_the_checkpoint(tmp_path):
    torch.manual_seed(0)
    model = UNet3D(NetworkConfig(**TINY_NETWORK))
    optimizer = torch.optim.Adam(model.parameters())
    saved = save_checkpoint(tmp_path / "run", model, optimizer, 3, "mito", (5, 5, 5))

    exported = export_weights(saved, tmp_path / "models" / "mito.pt", {"trained_on": "test"})

    original, _ = model_from_checkpoint(saved)
    shipped, state = model_from_checkpoint(exported)
    assert state["optimizer"] is None and state["provenance"] == {"trained_on": "test"}
    assert all(t.dtype == torch.float16 for t in torch.load(exported, weights_only=True)["model"].values())
    raw = torch.rand(1, 1, 28, 28, 28) * 2 - 1
    with torch.no_grad():
        assert torch.allclose(shipped(raw), original(raw), atol=1e-2)


def test_bundled_mito_model_loads():
    model, state = model_from_checkpoint(bundled_model("mito"))
    assert state["organelle"] == "mito" and state["voxel_size"] == [5, 5, 5]
    # the target: the field's F1 (every voxel) on slices no choice saw, at the threshold the model records
    held_out = state["provenance"]["held_out_slices_145_164"]
    assert held_out["f1"] >= 0.92 and held_out["iou"] >= 0.85
    assert 0 < state["threshold"] < 1
    with pytest.raises(UserError, match="no bundled model for 'golgi'"):
        bundled_model("golgi")


def test_checkpoints_are_files_run_folders_or_bundled_models(tmp_path):
    assert resolve_checkpoint("bundled:mito") == bundled_model("mito")
    assert resolve_checkpoint("some/file.pt") == Path("some/file.pt")
    with pytest.raises(UserError, match="no bundled model for 'er'"):
        resolve_checkpoint("bundled:er")
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    for iteration in (2, 4):
        (run / "checkpoints" / f"iteration_{iteration:08d}.pt").touch()
    with pytest.raises(UserError, match="a folder without summary.json"):
        resolve_checkpoint(run)
    # the best by validation F1, found in the folder wherever the run was started from
    (run / "summary.json").write_text(
        json.dumps({"best": {"checkpoint": "elsewhere/checkpoints/iteration_00000002.pt"}})
    )
    assert resolve_checkpoint(run) == run / "checkpoints/iteration_00000002.pt"
    (run / "summary.json").write_text(json.dumps({"best": None}))  # no validation: the last
    assert resolve_checkpoint(run) == run / "checkpoints/iteration_00000004.pt"


#: a tiny slice-wise 2D U-Net with batch norm: 1 x 28^2 -> 1 x 10^2
TINY_2D = {
    "feature_maps": 3,
    "downsamplings": 1,
    "downsample_factors": [[1, 2, 2]],
    "kernel_sizes": [[1, 3, 3], [1, 3, 3]],
    "normalization": "batch",
    "input_shape": [1, 28, 28],
}
AUGMENT_2D = {
    "mirror_transpose": True,
    "elastic": {"control_point_spacing": [1, 8, 8], "jitter_sigma": [0, 1, 1], "subsample": 2},
    "intensity": {},
}


def test_slice_wise_network_trains_on_batches_with_bce_dice_and_calibrated_batch_norm(tmp_path, cell):
    path = write_config(
        tmp_path / "c.yaml",
        tmp_path / "run",
        [training_of(cell)],
        [validation_of(cell)],
        network=TINY_2D,
        augmentation=AUGMENT_2D,
        loss="bce_dice",
        batch_size=3,
        batch_norm_calibration=2,
        validation_input_shape=[12, 44, 44],
    )
    result = run_cli("train", path, "--quiet", cwd=tmp_path)

    assert result.returncode == 0, result.stderr
    run = tmp_path / "run"
    snapshot = open_dataset(run / "snapshots.zarr/iteration_00000004/raw")
    assert snapshot.shape == (1, 28, 28)  # one sample of the batch of three
    summary = json.loads((run / "summary.json").read_text())
    last = summary["validation"][-1]
    assert 0 <= last["f1"] <= 1 and 0 <= last["iou"] <= last["f1"] and "exclusion_zone" in last
    statistics = load_checkpoint(checkpoints(run)[4])["model"]
    means = [v for k, v in statistics.items() if k.endswith("running_mean")]
    assert means and all(v.abs().sum() > 0 for v in means)  # computed, not the initial zeros
    assert all(int(v) == 2 for k, v in statistics.items() if k.endswith("num_batches_tracked"))  # the calibration's


def test_batch_norm_calibration_and_batches_resume_exactly(tmp_path, cell):
    options = dict(network=TINY_2D, augmentation=AUGMENT_2D, loss="bce_dice", batch_size=2)
    assert_resumed_run_equals_the_whole(tmp_path, cell, **options)


def test_time_budget_counts_every_invocation(tmp_path, cell):
    path = write_config(
        tmp_path / "c.yaml", tmp_path / "run", [training_of(cell)], iterations=40, time_budget_minutes=0.001
    )
    first = run_cli("train", path, "--quiet", cwd=tmp_path)
    assert first.returncode == 0 and "stopped at the time limit" in first.stdout, first.stderr
    assert list(checkpoints(tmp_path / "run")) == [1]
    assert load_checkpoint(checkpoints(tmp_path / "run")[1])["run_seconds"] > 0

    again = run_cli("train", path, "--resume", "--quiet", cwd=tmp_path)

    assert again.returncode == 2 and "spent its time budget" in again.stderr and "time_budget_minutes" in again.stderr


def test_finetune_keeps_the_checkpoints_raw_normalization(tmp_path, cell):
    model = UNet3D(NetworkConfig.model_validate(TINY_NETWORK))
    checkpoint = save_checkpoint(tmp_path / "a", model, None, 1, "mito", (5, 5, 5))  # no rule recorded: bit depth
    percentiles = {"mode": "percentiles"}
    path = write_config(tmp_path / "t.yaml", tmp_path / "t", [training_of(cell)], [validation_of(cell)],
                        raw_normalization=percentiles)  # fmt: skip
    with pytest.raises(UserError, match="raw_normalization: normalization by each volume's percentiles 0.5 and 99.5 "
                       "differs from the normalization by bit depth"):  # fmt: skip
        finetune(load_config(path), str(checkpoint))
    assert not (tmp_path / "t").exists()


def semi_supervised(tmp_path, schedule="alternate") -> dict:
    """The raw of another crop of the sample as unlabelled data."""
    write_dataset(tmp_path / "other.zarr/volumes/raw", sample_stack("raw", (40, 192, 192))[:, 96:, 96:])
    return {"unlabelled": [{"container": str(tmp_path / "other.zarr"), "raw": "volumes/raw"}], "schedule": schedule}


def test_semi_supervised_training_learns_to_reconstruct_and_prediction_and_export_never_see_the_decoder(tmp_path, cell):
    path = write_config(
        tmp_path / "c.yaml",
        tmp_path / "run",
        [training_of(cell)],
        [validation_of(cell)],
        iterations=40,
        checkpoint_every=40,
        validate_every=40,
        snapshot_every=40,
        augmentation={"mirror_transpose": False, "elastic": None, "intensity": None},
        sampling={"max_outside_mask": 1.0, "min_foreground": 0.0},
        optimizer={"learning_rate": 3e-3, "weight_decay": 0},
        semi_supervised=semi_supervised(tmp_path),
    )
    summary = train(load_config(path), progress=False)
    reconstruction = _scalars(tmp_path / "run" / "tensorboard", "loss/reconstruction")
    assert len(reconstruction) == 40 and len(_scalars(tmp_path / "run" / "tensorboard", "loss/train")) == 20
    assert np.mean(reconstruction[-10:]) < 0.7 * np.mean(reconstruction[:10])
    checkpoint = checkpoints(tmp_path / "run")[40]
    state = torch.load(checkpoint, weights_only=True)
    assert {"reconstruction", "model"} <= set(state) and not any(k.startswith("reconstruction") for k in state["model"])
    assert summary["best"]["iteration"] == 40
    exported = export_weights(checkpoint, tmp_path / "model.pt", provenance={})
    assert "reconstruction" not in torch.load(exported, weights_only=True)
    model, _ = model_from_checkpoint(exported)
    assert sum(p.numel() for p in model.parameters()) == NetworkConfig.model_validate(TINY_NETWORK).parameter_count()


@pytest.mark.slow  # heavy (~40 s): run in CI with -m slow, beside the real-data tests
@pytest.mark.parametrize("schedule", ["alternate", "joint"])
def test_semi_supervised_runs_resume_exactly(tmp_path, cell, schedule):
    half = assert_resumed_run_equals_the_whole(tmp_path, cell, semi_supervised=semi_supervised(tmp_path, schedule))
    a, b = (load_checkpoint(checkpoints(tmp_path / run)[4]) for run in ("a", "b"))
    for key, value in a["reconstruction"].items():
        assert torch.equal(value, b["reconstruction"][key]), key
    assert half.exists()


def unlabelled_raw(content: dict, tmp_path, volume: np.ndarray, **options) -> None:
    """The config's unlabelled region made `volume` (written with `options`)."""
    write_dataset(tmp_path / "other.zarr/volumes/other", volume, **options)
    content["semi_supervised"]["unlabelled"][0]["raw"] = "volumes/other"


@pytest.mark.parametrize(
    "change, message",
    [
        (
            lambda c, tmp: c.update(network={**TINY_NETWORK, "downsamplings": 0, "input_shape": [10, 10, 10]}),
            "semi_supervised: a reconstruction decoder needs a network with a bottleneck; set network.downsamplings",
        ),
        (
            lambda c, tmp: unlabelled_raw(c, tmp, np.zeros((40, 96, 96), np.uint8), voxel_size=(10, 10, 10)),
            r"unlabelled\[0\]\.raw: voxel size \(10, 10, 10\) nm of .* differs from training\[0\]'s \(5, 5, 5\) nm",
        ),
        (
            lambda c, tmp: unlabelled_raw(c, tmp, np.zeros((40, 96, 96), np.uint16)),
            r"semi_supervised\.unlabelled\[0\]\.raw: dtype uint16 of .* differs from training\[0\]'s uint8",
        ),
        (
            lambda c, tmp: c["semi_supervised"]["unlabelled"][0].update(
                roi={"offset": [0, 0, 0], "shape": [20, 96, 96]}
            ),
            r"semi_supervised\.unlabelled\[0\]\.roi: shape \[20, 96, 96\] \(voxels\) is smaller than the network input",
        ),
        (lambda c, tmp: c["semi_supervised"].update(unlabelled=[]), "semi_supervised.unlabelled"),
    ],
)
def test_bad_semi_supervised_configs_fail_with_one_line(tmp_path, cell, change, message, capsys):
    content = yaml.safe_load(
        write_config(
            tmp_path / "c.yaml", tmp_path / "run", [training_of(cell)], semi_supervised=semi_supervised(tmp_path)
        ).read_text()
    )
    change(content, tmp_path)
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(content))
    result = run_cli_in_process(capsys, "train", tmp_path / "c.yaml", "--quiet", cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and re.search(message, lines[0]), lines
    assert not (tmp_path / "run").exists()
