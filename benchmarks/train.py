"""Benchmark training throughput: iterations/s and the share of time the device waits for data.

Runs the real training loop (`incasem_like.training.train.Run`: gunpowder graph with rejection sampling and all
augmentations, batch preparation in `data_workers` processes, forward + backward + Adam) on the Lucchi volume
(converted once into a temporary zarr), for each `--data-workers` count, `--iterations` iterations after
`--warmup` iterations, without validation, checkpoints or snapshots in the timed part. It reports, per worker
count, iterations/s and the fraction of the loop spent waiting for the next batch, with the device name.

    python benchmarks/train.py [--config configs/training/lucchi_mito_cpu.yaml] [--data-workers 0 1 2]
                               [--iterations 30] [--warmup 5] [--device auto] [--out benchmarks/results/train_cpu.json]

On a GPU machine: `--config configs/training/mito.yaml --data-workers 12 --device cuda` times the ASEM network
at 204^3 (the method's reference: ~1 it/s on an A100).
"""

import argparse
import datetime
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from convert import machine, source_digest, write_result  # noqa: E402  (the shared benchmark helpers)

LUCCHI = Path(__file__).resolve().parents[2] / "shared" / "data" / "lucchi_pp_train"


def prepare(data: Path, workdir: Path) -> Path:
    """Raw and mito labels of the Lucchi slices as zarr (raw stands in for CLAHE: the cost is the same)."""
    from incasem_like.blockwise.runner import run_stage
    from incasem_like.stages.convert import ConvertStage

    container = workdir / "lucchi.zarr"
    for folder, name, mode in (("raw", "volumes/raw", "image"), ("mito", "volumes/labels/mito", "binary_labels")):
        stage = ConvertStage(
            source=str(data / folder), output=str(container / name), voxel_size=(5, 5, 5), label_mode=mode
        )
        run_stage(stage, workers=2, progress=False)
    return container


def time_training(config_path: Path, container: Path, workdir: Path, workers: int, args) -> dict:
    from incasem_like.blockwise.lock import RunLock
    from incasem_like.training.config import load_config
    from incasem_like.training.train import Run

    cell = {"container": str(container), "raw": "volumes/raw", "labels": "volumes/labels/mito"}
    total = args.warmup + args.iterations
    config = load_config(
        config_path,
        {
            "training": [cell],
            "validation": [],
            "run_dir": str(workdir / f"run_{workers}"),
            "iterations": total,
            "checkpoint_every": 10**9,
            "snapshot_every": 10**9,
            "data_workers": workers,
            "device": args.device,
        },
    )
    run = Run(config)
    with RunLock(run.lock_path, str(run.dir)):  # creates the run directory, as `incasem-like train` does
        run.prepare_directory(resume=False, overwrite=True)
        start = time.perf_counter()
        run.config = config.model_copy(update={"iterations": args.warmup})
        run.run(0, progress=False)
        warm = time.perf_counter()
        run.config = config
        summary = run.run(args.warmup, progress=False)
    timing = summary["timing"]
    return {
        "data_workers": workers,
        "warmup_seconds": round(warm - start, 2),
        "timed_iterations": args.iterations,
        "iterations_per_second": timing["iterations_per_second"],
        "data_wait_fraction": timing["data_wait_fraction"],
        "data_wait_seconds": timing["data_wait_seconds"],
        "compute_seconds": timing["compute_seconds"],
        "device": summary["device"],
        "bf16": summary["bf16"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, default=Path("configs/training/lucchi_mito_cpu.yaml"))
    parser.add_argument("--data", type=Path, default=LUCCHI, help="folder with raw/ and mito/ TIFF slices")
    parser.add_argument("--data-workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--iterations", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "train_cpu.json")
    args = parser.parse_args()
    started = datetime.datetime.now(datetime.timezone.utc)
    digest = source_digest()
    with tempfile.TemporaryDirectory(prefix="incasem_bench_train_", dir="/tmp") as workdir:
        container = prepare(args.data, Path(workdir))
        cases = {
            f"{w}_data_workers": time_training(args.config, container, Path(workdir), w, args)
            for w in args.data_workers
        }
        for name, case in cases.items():
            print(name, case, flush=True)
    from incasem_like.training.config import load_config

    network = load_config(args.config, {"training": [{"container": "x", "labels": "y"}]}).network
    result = {
        "benchmark": "incasem-like training loop: iterations/s and data-wait fraction",
        "date": started.isoformat(timespec="seconds"),
        "machine": {
            **machine(("incasem-like", "torch", "gunpowder", "zarr", "numpy")),
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        },
        "incasem_like_source": {"digest": digest, "changed_during_run": source_digest() != digest},
        "parameters": {
            "command": " ".join([Path(sys.executable).name, *sys.argv]),
            "config": str(args.config),
            "network": network.model_dump(mode="json"),
            "output_shape": list(network.output_shape()),
            "iterations": args.iterations,
            "warmup": args.warmup,
        },
        "cases": cases,
        "targets": {
            "gpu_iterations_per_second_at_204": {
                "target": 8,
                "applies": network.input_shape == (204, 204, 204) and torch.cuda.is_available(),
            }
        },
    }
    write_result(result, args.out)


if __name__ == "__main__":
    main()
