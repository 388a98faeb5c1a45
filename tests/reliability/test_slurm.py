"""Runs on a real SLURM cluster: the single-node cluster `.ci/slurm.sh` starts on this machine (CI starts it before
the reliability suite). Jobs are real `sbatch` submissions running real worker processes: a run with
`--cluster slurm` equals the local run bit for bit, a job cancelled with `scancel` mid-run is replaced and the
output is still identical, and a job killed by its time limit is reported. The fake `sbatch`/`bsub` of
`tests/blockwise/fake_cluster.py` cover LSF and the failures a real cluster cannot be made to show."""

import os
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest

from incasem_like.cli.main import main
from tests.conftest import REPO, read_dataset, write_dataset

pytestmark = pytest.mark.reliability


def cluster_up() -> bool:
    if shutil.which("sinfo") is None:
        return False
    nodes = subprocess.run(["sinfo", "--noheader", "--states=idle,mix,alloc"], capture_output=True, text=True)
    return nodes.returncode == 0 and bool(nodes.stdout.strip())


requires_slurm = pytest.mark.skipif(not cluster_up(), reason="no SLURM cluster here: `.ci/slurm.sh` starts one")


@pytest.fixture
def raw(tmp_path):
    data = np.random.default_rng(3).integers(0, 256, (32, 48, 48)).astype(np.uint8)
    return write_dataset(tmp_path / "c.zarr/volumes/raw", data, chunk=16)


def clahe(raw, out, *extra) -> list[str]:
    return ["clahe", str(raw), str(out), "--kernel", "16", "--block", "16", "--chunk", "16", "--quiet", *extra]


@requires_slurm
def test_a_slurm_run_equals_the_local_run_bit_for_bit(raw, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(clahe(raw, tmp_path / "c.zarr/volumes/local")) == 0
    assert main(clahe(raw, tmp_path / "c.zarr/volumes/slurm", "--cluster", "slurm", "--workers", "2")) == 0
    np.testing.assert_array_equal(
        read_dataset(tmp_path / "c.zarr/volumes/slurm"), read_dataset(tmp_path / "c.zarr/volumes/local")
    )
    logs = list((tmp_path / "c.zarr/volumes/slurm/.incasem_run/logs/jobs").glob("*.out"))
    assert logs, "no job logs: the workers did not run as SLURM jobs"


def slow_clahe_run(raw, out, seconds_per_block: float, *cluster: str) -> subprocess.Popen:
    """The clahe command, each block of it taking `seconds_per_block` longer (a slow stage in the jobs)."""
    program = (
        "import sys\n"
        "from incasem_like.workflow import steps\n"
        "from tests.toy_stages import SlowClaheStage\n"
        "steps.ClaheStep.stage_class = SlowClaheStage\n"
        "from incasem_like.cli.main import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    env = {**os.environ, "INCASEM_TEST_BLOCK_SLEEP": str(seconds_per_block), "PYTHONPATH": str(REPO)}
    argv = [*clahe(raw, out), "--cluster", "slurm", *cluster]
    return subprocess.Popen([sys.executable, "-c", program, *argv], env=env, stderr=subprocess.PIPE, text=True)


def running_jobs() -> list[str]:
    listing = subprocess.run(["squeue", "--noheader", "--states=R", "--format=%i"], capture_output=True, text=True)
    return listing.stdout.split()


@requires_slurm
def test_a_job_cancelled_mid_run_is_replaced_and_the_output_is_identical(raw, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(clahe(raw, tmp_path / "c.zarr/volumes/local")) == 0
    run = slow_clahe_run(raw, tmp_path / "c.zarr/volumes/slurm", 0.5, "--workers", "2")
    deadline = time.monotonic() + 180
    while not (jobs := running_jobs()) or not (tmp_path / "c.zarr/volumes/slurm/.incasem_run/tracking").exists():
        assert run.poll() is None and time.monotonic() < deadline, run.stderr.read() if run.stderr else ""
        time.sleep(0.2)
    time.sleep(2)
    subprocess.run(["scancel", jobs[0]], check=True)
    _, stderr = run.communicate(timeout=600)

    assert run.returncode == 0, stderr
    np.testing.assert_array_equal(
        read_dataset(tmp_path / "c.zarr/volumes/slurm"), read_dataset(tmp_path / "c.zarr/volumes/local")
    )


@requires_slurm
def test_a_job_killed_by_its_time_limit_is_reported(raw, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run = slow_clahe_run(
        raw, tmp_path / "c.zarr/volumes/slurm", 600, "--workers", "1", "--time-limit", "1", "--max-restarts", "0"
    )
    _, stderr = run.communicate(timeout=600)

    assert run.returncode == 1, stderr
    line = stderr.strip().splitlines()[-1]
    assert line.startswith("incasem-like: failed: clahe: ") and "hit its time limit (1 min); raise --time-limit" in line
