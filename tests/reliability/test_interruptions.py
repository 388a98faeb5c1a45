"""Real processes interrupted, starved or raced: Ctrl-C, a full disk, a second command writing into a running
command's outputs, a training run that diverges. Each ends in one line that says what happened and how to resume,
and leaves the outputs marked incomplete (or untouched)."""

import json
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from incasem_like.cli.main import main
from incasem_like.nn.checkpoints import save_checkpoint
from incasem_like.store.datasets import DatasetPath, dataset_meta
from tests.conftest import REPO, interruptible, write_dataset, write_slices
from tests.reliability.test_bad_inputs import cell, config
from tests.reliability.test_blockwise_faults import varied_network

SLEEP_ENV = "INCASEM_TEST_BLOCK_SLEEP"  # tests.toy_stages.SlowBlocks

pytestmark = pytest.mark.reliability


def raw(path: Path, shape=(64, 64, 64)) -> DatasetPath:
    return write_dataset(path, np.random.default_rng(0).integers(0, 256, shape).astype(np.uint8), chunk=16)


def command(*args) -> list[str]:
    return [sys.executable, "-m", "incasem_like", *map(str, args)]


def one_line(stderr: str) -> str:
    """The last line of the error stream, checked to be the only one besides a progress bar's."""
    lines = [line for line in stderr.replace("\r", "\n").splitlines() if line.strip() and "|" not in line]
    assert len(lines) == 1, stderr
    return lines[0]


def test_ctrl_c_ends_in_one_line_with_the_command_that_resumes(tmp_path):
    source = raw(tmp_path / "c.zarr/volumes/raw", (96, 128, 128))
    argv = ["clahe", source, tmp_path / "c.zarr/volumes/out", "--kernel", 16, "--block", 16, "--chunk", 16]
    run = subprocess.Popen(
        command(*argv, "--workers", 2),
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        cwd=tmp_path,
        preexec_fn=interruptible,
    )
    out = DatasetPath.parse(tmp_path / "c.zarr/volumes/out")
    deadline = time.monotonic() + 120
    while not (out.group_path / ".incasem_run/tracking").exists():  # the workers are at it
        assert run.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    time.sleep(1)
    os.killpg(run.pid, signal.SIGINT)  # as a terminal's Ctrl-C: the whole process group
    _, stderr = run.communicate(timeout=120)

    assert run.returncode == 130
    expected = "incasem-like: interrupted; resume with: incasem-like " + " ".join(map(str, [*argv, "--workers", 2]))
    assert one_line(stderr) == expected
    assert dataset_meta(out)["complete"] is False
    resumed = subprocess.run(command(*argv, "--quiet"), capture_output=True, text=True, cwd=tmp_path)
    assert resumed.returncode == 0 and " skipped (already done)" in resumed.stdout, resumed.stderr


def test_ctrl_c_in_training_names_the_resuming_command(tmp_path):
    path = config(tmp_path, cell(tmp_path), iterations=10_000, checkpoint_every=1, validate_every=1)
    run = subprocess.Popen(
        command("train", path, "--quiet"), stderr=subprocess.PIPE, text=True, cwd=tmp_path, preexec_fn=interruptible
    )
    deadline = time.monotonic() + 300
    while not list((tmp_path / "run/checkpoints").glob("iteration_*.pt")):
        assert run.poll() is None and time.monotonic() < deadline
        time.sleep(0.1)
    run.send_signal(signal.SIGINT)
    _, stderr = run.communicate(timeout=120)

    assert run.returncode == 130
    assert one_line(stderr) == f"incasem-like: interrupted; resume with: incasem-like train {path} --quiet --resume"
    last = max(int(p.stem.split("_")[1]) for p in (tmp_path / "run/checkpoints").glob("iteration_*.pt"))
    resumed = subprocess.run(
        command("train", path, "--quiet", "--resume", "--iterations", last + 1), capture_output=True, text=True
    )
    assert resumed.returncode == 0, resumed.stderr  # the advised command (here ended one iteration later) works


def without_more_disk(limit: int):
    """For a child process: files larger than `limit` bytes cannot be written (EFBIG, as a full disk's ENOSPC
    would stop them), and the signal that would otherwise kill the writer is ignored."""

    def limit_files() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)

    return limit_files


@pytest.mark.parametrize("name", ["convert", "predict"])
def test_a_full_disk_ends_in_one_line_and_the_outputs_stay_incomplete(name, tmp_path):
    if name == "convert":
        write_slices(tmp_path / "slices", np.random.default_rng(1).integers(0, 256, (32, 256, 256), np.uint8))
        out = tmp_path / "c.zarr/volumes/raw"
        argv = ["convert", tmp_path / "slices", out, "--voxel-size", 5, 5, 5, "--chunk", 16]
    else:
        source = raw(tmp_path / "c.zarr/volumes/raw", (16, 16, 16))
        checkpoint = save_checkpoint(tmp_path / "run", varied_network(), None, 1, "mito", (5, 5, 5))
        out = tmp_path / "c.zarr/volumes/pred/probabilities"
        argv = ["predict", "--checkpoint", checkpoint, "--raw", source, "--out", out.parent, "--device", "cpu"]
        argv += ["--step", 8, "--block", 8, "--chunk", 8]
    result = subprocess.run(
        command(*argv, "--quiet"), capture_output=True, text=True, cwd=tmp_path, preexec_fn=without_more_disk(1500)
    )

    assert result.returncode in (1, 2), result.stderr
    line = one_line(result.stderr)
    assert line.startswith(("incasem-like: failed: ", "incasem-like: error: ")) and "File too large" in line, line
    assert "rerun the same command" in line or "resume with: incasem-like" in line, line
    assert dataset_meta(DatasetPath.parse(out)).get("complete") is not True


def test_a_second_command_cannot_write_into_a_running_commands_outputs(tmp_path):
    """`predict` with a clean-up writes its segmentation last, with the threshold stage; while it predicts, the
    segmentation is already its own: another command writing there is refused."""
    source = raw(tmp_path / "c.zarr/volumes/raw", (16, 16, 16))
    checkpoint = save_checkpoint(tmp_path / "run", varied_network(), None, 1, "mito", (5, 5, 5))
    out = tmp_path / "c.zarr/volumes/pred"
    program = (
        "import sys\n"
        "from incasem_like.workflow import steps\n"
        "from tests.predict_stages import SlowPredictStage\n"
        "steps.PredictStage = SlowPredictStage\n"
        "from incasem_like.cli.main import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    argv = ["predict", "--checkpoint", checkpoint, "--raw", source, "--out", out, "--device", "cpu", "--step", 8]
    argv += ["--block", 8, "--chunk", 8, "--min-object-voxels", 10, "--quiet"]
    env = {**os.environ, SLEEP_ENV: "1", "PYTHONPATH": str(REPO)}
    run = subprocess.Popen([sys.executable, "-c", program, *map(str, argv)], env=env, cwd=tmp_path)
    try:
        deadline = time.monotonic() + 120
        while not (out / "probabilities/.incasem_run/tracking").exists():
            assert run.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        code = main(["clahe", str(source), str(out / "segmentation"), "--overwrite", "--quiet"])
        assert code == 2
        assert run.wait(timeout=300) == 0
    finally:
        if run.poll() is None:
            run.kill()
    assert dataset_meta(DatasetPath.parse(out / "segmentation"))["kind"] == "labels"  # the prediction's, whole


def test_training_that_diverges_stops_in_one_line(tmp_path, monkeypatch, capsys):
    """A loss that turns NaN (here made so: a bounded learning rate rarely gets there) stops training at once."""
    from incasem_like.training import train

    real_loss = train.training_loss
    calls = iter(range(1_000_000))
    monkeypatch.setattr(train, "training_loss", lambda *a: real_loss(*a) * (float("nan") if next(calls) >= 3 else 1))
    path = config(tmp_path, cell(tmp_path), iterations=10, checkpoint_every=2, validate_every=10)

    code = main(["train", str(path), "--quiet"])

    error = capsys.readouterr().err
    assert code == 2 and error.count("\n") == 1, error
    assert f"incasem-like: error: {tmp_path / 'run'}: training diverged at iteration " in error
    assert ": the loss is nan (learning rate 3e-05)" in error
    assert "lower optimizer.learning_rate and rerun with --resume from iteration 2, or --overwrite" in error
    assert sorted(p.name for p in (tmp_path / "run/checkpoints").glob("iteration_*.pt")) == ["iteration_00000002.pt"]


def test_12_bit_data_in_uint16_is_normalized_by_its_range(tmp_path):
    """A camera's 12-bit values in uint16 slices: convert records the bit depth, and predict normalizes by 4095, so
    it predicts what it predicts for the same image stretched over 16 bits."""
    twelve_bit = np.random.default_rng(2).integers(0, 4096, (16, 16, 16)).astype(np.uint16)
    write_slices(tmp_path / "slices12", twelve_bit)
    write_slices(tmp_path / "slices16", (twelve_bit.astype(np.uint32) * 65535 // 4095).astype(np.uint16))
    checkpoint = save_checkpoint(tmp_path / "run", varied_network(), None, 1, "mito", (5, 5, 5))
    probabilities = []
    for bits in (12, 16):
        name = f"c.zarr/volumes/raw{bits}"
        assert (
            main(
                [
                    "convert",
                    str(tmp_path / f"slices{bits}"),
                    str(tmp_path / name),
                    "--voxel-size",
                    "5",
                    "5",
                    "5",
                    "--quiet",
                ]
            )
            == 0
        )
        assert dataset_meta(DatasetPath.parse(tmp_path / name))["source"]["value_bits"] == bits
        out = tmp_path / f"c.zarr/volumes/pred{bits}"
        argv = ["predict", "--checkpoint", checkpoint, "--raw", tmp_path / name, "--out", out, "--device", "cpu"]
        assert main([*map(str, argv), "--step", "8", "--block", "8", "--chunk", "8", "--quiet"]) == 0
        probabilities.append(np.asarray(__import__("zarr").open_array(out / "probabilities/s0")[:]))
    assert np.abs(probabilities[0].astype(int) - probabilities[1].astype(int)).max() <= 1
    assert 0.1 < probabilities[0].mean() / 255 < 0.9


def test_a_checkpoint_of_another_organelle_is_warned_about(tmp_path, caplog):
    source = raw(tmp_path / "c.zarr/volumes/raw", (16, 16, 16))
    checkpoint = save_checkpoint(tmp_path / "run", varied_network(), None, 1, "mito", (5, 5, 5))
    argv = ["predict", "--checkpoint", checkpoint, "--raw", source, "--out", tmp_path / "c.zarr/volumes/er"]
    argv += ["--organelle", "er", "--device", "cpu", "--step", 8, "--block", 8, "--chunk", 8, "--quiet"]
    assert main(list(map(str, argv))) == 0
    assert f"{checkpoint} was trained for mito, not er; check the checkpoint" in caplog.text
    assert json.loads(json.dumps(dataset_meta(DatasetPath.parse(tmp_path / "c.zarr/volumes/er/probabilities"))))
