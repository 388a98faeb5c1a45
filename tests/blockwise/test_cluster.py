"""Cluster execution through fake `sbatch`/`bsub` executables (tests/blockwise/fake_cluster.py) first on PATH:
real daisy, real worker processes, real zarr; only the batch system is played by the fakes."""

import ipaddress
import os
import re
import shlex
import socket
import subprocess
import threading

import numpy as np
import pytest
from scipy.ndimage import correlate

from incasem_like.blockwise.cluster import cluster_settings
from incasem_like.blockwise.launchers import JobResources, LsfLauncher, worker_command
from incasem_like.blockwise.runner import run_stage
from incasem_like.cli.main import main
from incasem_like.core.errors import BlockwiseRunFailed
from incasem_like.store.datasets import RUN_DIR, DatasetPath, create_dataset, open_dataset, update_dataset_meta
from tests.blockwise.fake_cluster import FakeCluster, SlowBoxSumStage, kill_first_job
from tests.conftest import REPO, read_dataset, run_cli, write_dataset, write_slices
from tests.toy_stages import BoxSumStage


@pytest.fixture
def fake_cluster(tmp_path, monkeypatch) -> FakeCluster:
    cluster = FakeCluster(tmp_path / "fake_cluster")
    monkeypatch.setenv("PATH", f"{cluster.folder}{os.pathsep}{os.environ['PATH']}")
    return cluster


@pytest.fixture
def source(tmp_path, rng):
    """A complete 16 x 16 x 24 uint8 dataset with 4 x 5 x 6 nm voxels: 12 blocks of BoxSumStage."""
    path = DatasetPath.parse(tmp_path / "cell.zarr/volumes/raw")
    data = rng.integers(0, 256, size=(16, 16, 24), dtype=np.uint8)
    array = create_dataset(path, data.shape, (4, 5, 6), (40, -10, 60), np.uint8, (8, 8, 8))
    array[array.roi] = data
    update_dataset_meta(path, complete=True)
    return path, data


def box_sum(data: np.ndarray, radius: int) -> np.ndarray:
    return correlate(data.astype(np.int32), np.ones((2 * radius + 1,) * 3, dtype=np.int32), mode="constant")


def scheduler_host(submission: dict) -> str:
    """The scheduler address a submitted job was given (`hostname` in its DAISY_CONTEXT, `key=value:...`)."""
    return re.search(r"(?:^|:)hostname=([^:]*)", submission["env"]["DAISY_CONTEXT"])[1]


def read_all(path) -> np.ndarray:
    array = open_dataset(path, require_complete=False)
    return array[array.roi]


def test_slurm_jobs_get_the_resources_and_environment_and_write_what_a_local_run_writes(source, tmp_path, fake_cluster):
    path, _ = source
    local = BoxSumStage(input=str(path), output=str(tmp_path / "cell.zarr/volumes/local"), radius=2)
    run_stage(local, workers=2, progress=False)
    stage = BoxSumStage(input=str(path), output=str(tmp_path / "cell.zarr/volumes/cluster"), radius=2)
    settings = {
        "cluster": "slurm",
        "gpus": "1",
        "cpus": "3",
        "memory": "2G",
        "time_limit": "1:30:00",
        "queue": "gpu",
        "account": "lab",
        "scheduler_args": "--qos=high --constraint='a100 80gb'",
        "scheduler_host": "127.0.0.1",
    }

    summary = run_stage(stage, workers=2, launcher=cluster_settings(settings).launcher(), progress=False)

    assert summary["blocks_processed"] == 12 and summary["blocks_failed"] == 0
    np.testing.assert_array_equal(read_all(stage.output_path()), read_all(local.output_path()))
    assert set(np.unique(read_all(stage.pid_path()))) <= set(fake_cluster.job_pids())  # the jobs wrote it all
    run_dir = stage.output_path().group_path / RUN_DIR
    jobs = run_dir / "logs" / "jobs"
    submissions = fake_cluster.submissions()
    assert len(submissions) == 2
    for submission in submissions:
        assert submission["options"] == {
            "--wait": True,
            "--job-name": "incasem-box_sum",
            "--output": f"{jobs}/incasem-box_sum-%j.out",
            "--export": "ALL",
            "--no-requeue": True,
            "--ntasks": "1",
            "--cpus-per-task": "3",
            "--gres": "gpu:1",
            "--mem": "2048M",
            "--time": "90",
            "--partition": "gpu",
            "--account": "lab",
            "--qos": "high",
            "--constraint": "a100 80gb",
        }
        assert submission["command"] == [str(jobs / "worker_job.sh"), *worker_command(run_dir / "spec.json")]
        assert submission["env"]["INCASEM_LIKE_WORKER_THREADS"] == "3"
        assert scheduler_host(submission) == "127.0.0.1"
        assert (jobs / f"incasem-box_sum-{submission['job_id']}.out").exists()


def test_a_job_killed_by_the_cluster_is_replaced_and_the_run_completes(source, tmp_path, fake_cluster, monkeypatch):
    path, data = source
    monkeypatch.setenv("INCASEM_TEST_BLOCK_SLEEP", "0.4")
    stage = SlowBoxSumStage(input=str(path), output=str(tmp_path / "cell.zarr/volumes/sum"))
    launcher = cluster_settings({"cluster": "slurm", "scheduler_host": "127.0.0.1"}).launcher()
    killed: list[int] = []
    killer = threading.Thread(target=kill_first_job, args=(fake_cluster, stage, 2, killed))
    killer.start()

    summary = run_stage(stage, workers=2, launcher=launcher, progress=False)

    killer.join()
    assert len(killed) == 1, "no job was killed"
    assert summary["complete"] and summary["blocks_processed"] == 12
    assert len(fake_cluster.submissions()) >= 3, "the killed job was not replaced"
    np.testing.assert_array_equal(open_dataset(stage.output_path())[open_dataset(path).roi], box_sum(data, 1))


def machine_addresses() -> set[str]:
    """This machine's non-loopback IPv4 addresses, as `ip` and the resolver see them."""
    addresses = set()
    try:
        listing = subprocess.run(["ip", "-4", "-o", "addr", "show"], capture_output=True, text=True).stdout
        addresses |= {word.split("/")[0] for line in listing.splitlines() for word in line.split()[3:4]}
    except FileNotFoundError:
        pass
    try:
        addresses.add(socket.gethostbyname(socket.gethostname()))
    except OSError:
        pass
    return {address for address in addresses if not ipaddress.ip_address(address).is_loopback}


def test_workers_reach_the_scheduler_through_a_non_loopback_address(source, tmp_path, fake_cluster):
    addresses = machine_addresses()
    if not addresses:
        pytest.skip("this machine has no non-loopback IPv4 address")
    path, data = source
    stage = BoxSumStage(input=str(path), output=str(tmp_path / "cell.zarr/volumes/sum"))
    launcher = cluster_settings({"cluster": "lsf"}).launcher()
    assert socket.gethostbyname(launcher.scheduler_host) in addresses

    run_stage(stage, workers=2, launcher=launcher, progress=False)

    np.testing.assert_array_equal(open_dataset(stage.output_path())[open_dataset(path).roi], box_sum(data, 1))
    submissions = fake_cluster.submissions()
    assert submissions and {scheduler_host(submission) for submission in submissions} == {launcher.scheduler_host}


@pytest.mark.parametrize("kind", ["slurm", "lsf"])
def test_shell_metacharacters_in_the_output_path_reach_the_jobs_literally(
    kind, tmp_path, fake_cluster, volume, monkeypatch
):
    monkeypatch.setenv("PYTHONPATH", str(REPO))  # this checkout, run from another folder
    write_slices(tmp_path / "slices", volume)
    output = DatasetPath.parse(tmp_path / "; $(touch x) 'a b'" / "cell.zarr/volumes/raw")

    result = run_cli(
        "convert", tmp_path / "slices", output, "--voxel-size", 5, 5, 5, "--chunk", 16, "--workers", 2,
        "--cluster", kind, "--cpus", 2, "--scheduler-host", "127.0.0.1", "--quiet", cwd=tmp_path,
    )  # fmt: skip

    assert result.returncode == 0, result.stderr
    np.testing.assert_array_equal(read_dataset(output), volume)
    assert not (tmp_path / "x").exists()
    spec = str(output.group_path / RUN_DIR / "spec.json")
    for submission in fake_cluster.submissions():
        arguments = submission["command"] if kind == "slurm" else shlex.split(" ".join(submission["command"]))
        assert arguments[-4:] == worker_command(spec)[-4:]


def test_command_line_options_override_the_cluster_config(tmp_path, fake_cluster):
    config = tmp_path / "cluster.yaml"
    config.write_text("cluster: lsf\ncpus: 2\nqueue: long\nscheduler_args: [-x]\nscheduler_host: node0\n")

    launcher = cluster_settings({"cluster": None, "cpus": "4", "account": "lab"}, str(config)).launcher()

    assert launcher == LsfLauncher("node0", JobResources(cpus=4, queue="long", account="lab", extra_args=("-x",)))


def test_jobs_the_cluster_refuses_fail_the_run_instead_of_hanging(source, tmp_path, fake_cluster, monkeypatch):
    path, _ = source
    monkeypatch.setenv("FAKE_SBATCH_REFUSE", "Invalid partition name specified")
    stage = BoxSumStage(input=str(path), output=str(tmp_path / "cell.zarr/volumes/sum"))
    launcher = cluster_settings({"cluster": "slurm", "scheduler_host": "127.0.0.1", "max_restarts": 1}).launcher()

    with pytest.raises(BlockwiseRunFailed) as failure:
        run_stage(stage, workers=2, launcher=launcher, progress=False)

    message = str(failure.value)
    assert "0 of 12 blocks failed, 12 not processed; stopped after losing 3 workers" in message
    assert "sbatch exited with code 1: sbatch: error: Batch job submission failed: Invalid partition name" in message
    assert len(fake_cluster.submissions()) == 0 and len(fake_cluster.records("refused")) == 3


@pytest.mark.parametrize("kind", ["slurm", "lsf"])
def test_a_job_still_queued_when_the_run_ends_is_cancelled(kind, source, tmp_path, fake_cluster, monkeypatch):
    path, data = source
    monkeypatch.setenv("FAKE_PENDING_AFTER", "1")
    stage = BoxSumStage(input=str(path), output=str(tmp_path / "cell.zarr/volumes/sum"))
    launcher = cluster_settings({"cluster": kind, "scheduler_host": "127.0.0.1"}).launcher()

    summary = run_stage(stage, workers=2, launcher=launcher, progress=False)

    assert summary["complete"]
    np.testing.assert_array_equal(open_dataset(stage.output_path())[open_dataset(path).roi], box_sum(data, 1))
    assert [entry["job_id"] for entry in fake_cluster.records("started")] == [1001]
    assert [entry["job_id"] for entry in fake_cluster.records("cancelled")] == [1002]


CONFIGS = {
    "unknown.yaml": "cluster: slurm\ngpu: 1\n",
    "bad_value.yaml": "cluster: slurm\ncpus: 0\n",
    "local.yaml": "memory: 4G\n",
}


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--cluster", "pbs"], "--cluster pbs: Input should be 'local', 'slurm' or 'lsf'"),
        (["--cluster", "slurm", "--gpus", "two"], "--gpus two: Input should be a valid integer"),
        (["--cluster", "lsf", "--memory", "lots"], "--memory lots: give a size such as 16G"),
        (["--cluster", "slurm", "--time-limit", "2:00"], "--time-limit 2:00: give minutes (90) or [D-]H:MM:SS"),
        (["--cluster", "slurm", "--scheduler-args", "--qos 'high"], "--scheduler-args --qos 'high: cannot split"),
        (["--cluster", "lsf", "--max-restarts", "-1"], "--max-restarts -1: Input should be greater than or equal"),
        (["--cpus", "4"], "--cpus applies to cluster jobs only; add --cluster slurm or --cluster lsf"),
        (["--cluster", "slurm"], "--cluster slurm: sbatch is not on PATH"),
        (["--cluster-config", "missing.yaml"], "--cluster-config missing.yaml: no such file"),
        (["--cluster-config", "unknown.yaml"], "unknown.yaml: unknown key 'gpu'; the keys are cluster, gpus, cpus"),
        (["--cluster-config", "bad_value.yaml"], "bad_value.yaml: cpus 0: Input should be greater than or equal to 1"),
        (["--cluster-config", "local.yaml"], "local.yaml: memory applies to cluster jobs only"),
    ],
)
def test_bad_cluster_options_and_configs_are_one_line_and_exit_code_2(
    options, message, tmp_path, volume, capsys, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch or bsub
    for name, text in CONFIGS.items():
        (tmp_path / name).write_text(text)
    write_dataset(tmp_path / "cell.zarr/volumes/raw", volume)

    code = main(["clahe", "cell.zarr/volumes/raw", "cell.zarr/volumes/out", *options])

    error = capsys.readouterr().err
    assert code == 2 and error.count("\n") == 1 and message in error, error
    assert not (tmp_path / "cell.zarr/volumes/out").exists()
