"""`predict --device auto` on a cluster is decided by each job on its node, not on the machine that submits the jobs
(whose GPUs, or lack of them, say nothing about the nodes'). Jobs go through the fake sbatch of the cluster tests."""

import json
import os

import torch

from incasem_like.cli.main import main
from incasem_like.nn.checkpoints import save_checkpoint
from incasem_like.nn.model import NetworkConfig, UNet3D
from incasem_like.store.datasets import RUN_DIR, DatasetPath, dataset_meta
from tests.blockwise.fake_cluster import FakeCluster
from tests.conftest import write_dataset
from tests.training_data import sample_stack


def test_auto_device_and_precision_are_decided_by_the_jobs(tmp_path, monkeypatch, capsys):
    cluster = FakeCluster(tmp_path / "fake_cluster")
    monkeypatch.setenv("PATH", f"{cluster.folder}{os.pathsep}{os.environ['PATH']}")
    raw = write_dataset(tmp_path / "cell.zarr/volumes/raw", sample_stack("raw", (8, 16, 16)), chunk=8)
    torch.manual_seed(0)
    model = UNet3D(NetworkConfig(feature_maps=2, downsamplings=1, input_shape=(28, 28, 28)))
    checkpoint = save_checkpoint(tmp_path / "run", model, None, 1, "mito", (5, 5, 5))
    out = tmp_path / "cell.zarr/volumes/predictions"
    options = ["--block", "8", "--chunk", "8", "--step", "8", "--quiet"]

    code = main(
        ["predict", "--checkpoint", str(checkpoint), "--raw", str(raw), "--out", str(out), *options,
         "--cluster", "slurm", "--scheduler-host", "127.0.0.1"]
    )  # fmt: skip

    assert code == 0, capsys.readouterr().err
    run_dir = out / "probabilities" / RUN_DIR
    spec = json.loads((run_dir / "spec.json").read_text())
    assert (spec["config"]["device"], spec["config"]["precision"]) == ("auto", "auto")
    on_the_node = "cuda:0 in bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "cpu in fp32"
    job_logs = "".join(path.read_text() for path in (run_dir / "logs" / "jobs").glob("*.out"))
    assert len(cluster.submissions()) == 1 and f"predicting on {on_the_node}" in job_logs
    assert all(dataset_meta(DatasetPath.parse(out / name))["complete"] for name in ("probabilities", "segmentation"))
