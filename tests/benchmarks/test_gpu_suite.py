"""The device suite runs every step end to end on a CPU at tiny sizes (it cannot rot where no GPU is lent)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow  # ~3-5 min: nine predictions, a training run and the comparisons
def test_the_suite_runs_every_step_on_a_cpu_and_writes_its_json(tmp_path):
    out = tmp_path / "gpu.json"
    command = [
        "bash", str(REPO / "benchmarks/gpu_suite.sh"), "--device", "cpu", "--tiny", "--iterations", "2", "--warmup",
        "1", "--data-workers", "1", "--block", "64", "--budget", "3600", "--out", str(out),
    ]  # fmt: skip

    result = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "PYTHON": sys.executable})

    assert result.returncode == 0, result.stderr[-2000:]
    written = json.loads(out.read_text())
    assert not written["skipped"] and len(written["prediction"]) == 9
    assert all(case["voxels_per_second"] > 0 for case in written["prediction"].values())
    assert written["training"]["timed_iterations"] == 2 and written["training"]["iterations_per_second"] > 0
    assert written["bf16_agreement"]["voxels"] == 8 * 96 * 96
    assert written["device"] and written["targets"]["training_target"] == 8.0
    assert "[" in result.stdout and "predict asem_cell_bf16" in result.stdout  # it says where it stands


def test_a_budget_skips_the_remaining_steps_and_says_so(tmp_path):
    out = tmp_path / "gpu.json"
    command = ["bash", str(REPO / "benchmarks/gpu_suite.sh"), "--device", "cpu", "--tiny", "--budget", "0",
               "--out", str(out)]  # fmt: skip

    result = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "PYTHON": sys.executable})

    assert result.returncode == 0, result.stderr[-2000:]
    written = json.loads(out.read_text())
    assert written["prediction"] == {} and written["training"] is None and "training" in written["skipped"]
    assert "skipped (budget of 0 s spent)" in result.stdout


def test_cuda_without_a_gpu_is_one_line(tmp_path):
    if __import__("torch").cuda.is_available():
        pytest.skip("this machine has a GPU")
    command = ["bash", str(REPO / "benchmarks/gpu_suite.sh"), "--out", str(tmp_path / "gpu.json")]

    result = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "PYTHON": sys.executable})

    assert result.returncode != 0 and "torch sees no CUDA GPU" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and not (tmp_path / "gpu.json").exists()
