"""Security: checkpoints are loaded with `weights_only=True`, so a checkpoint crafted to run code when unpickled is
refused before its code runs. (The viewer's server and the cluster submissions have their security tests in
tests/review/test_view.py and tests/blockwise/test_cluster.py; tests/reliability/README.md lists them.)"""

import os

import pytest
import torch

from incasem_like.cli.main import main
from incasem_like.nn.checkpoints import FORMAT
from tests.conftest import write_dataset
from tests.training_data import sample_cell, sample_stack, write_config


class RunsCode:
    """Unpickling this calls os.system(command)."""

    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


@pytest.fixture
def malicious_checkpoint(tmp_path):
    """A checkpoint with our format marker whose unpickling would create the file `pwned`."""
    path = tmp_path / "model.pt"
    torch.save({"format": FORMAT, "network": RunsCode(f"touch {tmp_path / 'pwned'}")}, path)
    return path


@pytest.mark.parametrize("command", ["predict", "finetune"])
def test_checkpoint_that_would_run_code_is_refused_and_the_code_does_not_run(
    command, malicious_checkpoint, tmp_path, capsys
):
    if command == "predict":
        raw = write_dataset(tmp_path / "cell.zarr/volumes/raw", sample_stack("raw", (8, 16, 16)), chunk=8)
        out = tmp_path / "cell.zarr/volumes/predictions"
        argv = ["predict", "--checkpoint", malicious_checkpoint, "--raw", raw, "--out", out, "--device", "cpu"]
    else:
        cell = sample_cell(tmp_path / "cell.zarr", shape=(16, 96, 96))  # with mitochondria to validate on
        config = write_config(tmp_path / "tune.yaml", tmp_path / "run", [cell], [cell])
        argv = ["finetune", config, "--from", malicious_checkpoint]

    code = main([*map(str, argv), "--quiet"])

    error = capsys.readouterr().err
    assert code == 2 and error.count("\n") == 1, error
    assert f"{malicious_checkpoint}: refused: it would load the Python object posix.system" in error
    assert not (tmp_path / "pwned").exists()
