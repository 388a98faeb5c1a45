"""Training killed while it writes a checkpoint: the previous checkpoint stays loadable and `--resume` goes on to
the result of an uninterrupted run. Real training processes, a real SIGKILL in the middle of the write."""

import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from incasem_like.cli.main import main
from incasem_like.core.errors import UserError
from incasem_like.nn.checkpoints import checkpoint_path, checkpoints, load_checkpoint
from tests.conftest import REPO, run_cli
from tests.training_data import sample_cell, write_config


def start_training_pausing_in_checkpoint(config, iteration: int) -> subprocess.Popen:
    """`incasem-like train CONFIG` in a process group of its own, pausing half way through writing the checkpoint
    of `iteration` (tests/reliability/slow_checkpoints.py)."""
    program = (
        "import sys\n"
        "from tests.reliability.slow_checkpoints import pause_while_writing_checkpoint\n"
        f"pause_while_writing_checkpoint({iteration})\n"
        "from incasem_like.cli.main import main\n"
        f"sys.exit(main(['train', {str(config)!r}, '--quiet']))\n"
    )
    return subprocess.Popen([sys.executable, "-c", program], cwd=REPO, start_new_session=True)


def test_training_killed_while_writing_a_checkpoint_keeps_the_last_one_and_resumes_exactly(tmp_path, capsys):
    cell = sample_cell(tmp_path / "cell.zarr", shape=(24, 48, 48))
    config = write_config(tmp_path / "run.yaml", tmp_path / "run", [cell], snapshot_every=4)
    partial = checkpoint_path(tmp_path / "run", 4).with_suffix(".pt.partial")
    training = start_training_pausing_in_checkpoint(config, 4)
    try:
        deadline = time.monotonic() + 120
        while not (partial.exists() and partial.stat().st_size > 0):
            assert training.poll() is None and time.monotonic() < deadline, "training did not reach the checkpoint"
            time.sleep(0.05)

        refused = main(["train", str(config), "--resume", "--quiet"])  # while the first one holds the run

        assert refused == 2
        error = capsys.readouterr().err
        assert f"{tmp_path / 'run'} is locked by another run (pid {training.pid} on " in error, error
    finally:
        os.killpg(training.pid, signal.SIGKILL)
        training.wait()

    assert list(checkpoints(tmp_path / "run")) == [2]
    assert load_checkpoint(checkpoint_path(tmp_path / "run", 2))["iteration"] == 2
    with pytest.raises(UserError, match="not a readable checkpoint"):
        load_checkpoint(partial)  # the kill did hit the write

    resumed = run_cli("train", config, "--resume", "--quiet", cwd=tmp_path)

    assert resumed.returncode == 0, resumed.stderr
    assert "taking over the lock of a run that is gone" in resumed.stderr
    assert list(checkpoints(tmp_path / "run")) == [2, 4] and not partial.exists()
    uninterrupted = write_config(tmp_path / "reference.yaml", tmp_path / "reference", [cell], snapshot_every=4)
    assert run_cli("train", uninterrupted, "--quiet", cwd=tmp_path).returncode == 0
    expected = load_checkpoint(checkpoint_path(tmp_path / "reference", 4))["model"]
    for name, tensor in load_checkpoint(checkpoint_path(tmp_path / "run", 4))["model"].items():
        assert torch.equal(tensor, expected[name]), name
