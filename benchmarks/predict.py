"""Benchmark prediction end to end: output voxels/s of `incasem-like predict` vs a plain PyTorch sliding window.

For each network (`bundled`: the bundled mito model; `asem`: the method's 204^3 -> 110^3 network with random
weights, whose speed does not depend on them; NAME=PATH: any checkpoint, e.g. an earlier bundled model taken from
git history) on a volume of real EM texture (the embedded Lucchi sample, mirrored to `--shape`), it times:
- ours: the real command line (`incasem-like predict`, daisy workers, zarr in -> probabilities and segmentation
  zarr out), with 1 and 2 workers, wall time from command start to exit; with `--tta` also with test-time
  augmentation (2 workers), whose cost is quoted as the ratio to the same run without;
- plain: the same network in one process over the whole volume in memory: read the zarr, mirror-pad, one pass
  of the training input shape every largest multiple of the downsampling factor within its output, sigmoid, write
  both zarr datasets with zarr's defaults.
Medians of `--repeats` runs; the ratio ours/plain is quoted from the same run. (bf16's effect on the
segmentation: benchmarks/bf16.py.)

    python benchmarks/predict.py [--shape 128 384 384] [--networks bundled asem] [--tta] [--repeats 3]
    git show 9337fcb:incasem_like/nn/models/mito_lucchi_cpu.pt > /tmp/previous.pt
    python benchmarks/predict.py --networks bundled previous=/tmp/previous.pt --tta
"""

import argparse
import datetime
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
import zarr

sys.path.insert(0, str(Path(__file__).parent))
from convert import Meter, machine, source_digest, wait_for_quiet, write_result  # noqa: E402  (shared helpers)

from incasem_like.core.geometry import to_world  # noqa: E402
from incasem_like.nn.checkpoints import model_from_checkpoint, save_checkpoint  # noqa: E402
from incasem_like.nn.inference import predict_region  # noqa: E402
from incasem_like.nn.model import NetworkConfig, UNet3D, inference_model  # noqa: E402
from incasem_like.nn.models import bundled_model  # noqa: E402
from incasem_like.nn.normalization import normalize  # noqa: E402
from incasem_like.store.datasets import (  # noqa: E402
    DatasetPath,
    create_dataset,
    dataset_meta,
    open_dataset,
    update_dataset_meta,
)
from incasem_like.workflow.demo import SAMPLE  # noqa: E402


def tiff_stack(folder: Path) -> np.ndarray:
    """The TIFF slices in `folder`, in name order, as one volume."""
    import tifffile

    return np.stack([tifffile.imread(path) for path in sorted(folder.iterdir())])


def mirrored(volume: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """`volume` mirrored (forth and back) along each axis where it is shorter than `shape`, cropped to `shape`."""
    pad = [(0, max(0, want - have)) for want, have in zip(shape, volume.shape)]
    return np.ascontiguousarray(np.pad(volume, pad, mode="symmetric")[tuple(slice(0, s) for s in shape)])


def sample_volume(shape: tuple[int, int, int]) -> np.ndarray:
    return mirrored(tiff_stack(Path(str(SAMPLE)) / "raw"), shape)


def write_raw(volume: np.ndarray, container: Path) -> str:
    path = DatasetPath(container, "volumes/raw")
    array = create_dataset(path, volume.shape, to_world((5, 5, 5)), (0, 0, 0), np.uint8)
    array[array.roi] = volume
    update_dataset_meta(path, complete=True)
    return str(path)


def checkpoints(workdir: Path, names: list[str]) -> dict[str, Path]:
    """NAME -> checkpoint: `bundled`, `asem` (random weights) or NAME=PATH."""
    found = {}
    for name in names:
        if "=" in name:
            name, path = name.split("=", 1)
            found[name] = Path(path)
        elif name == "bundled":
            found[name] = bundled_model("mito")
        else:
            torch.manual_seed(0)
            found[name] = save_checkpoint(workdir / "asem", UNet3D(NetworkConfig()), None, 0, "mito", (5, 5, 5))
    return found


def time_ours(checkpoint: Path, raw: str, out: Path, workers: int, block: int, tta: str = "none") -> dict:
    """The command with the model's own defaults but for TTA and clean-up (timed separately or not at all)."""
    shutil.rmtree(out, ignore_errors=True)
    command = [
        sys.executable, "-m", "incasem_like", "predict", "--checkpoint", str(checkpoint), "--raw", raw,
        "--out", str(out), "--device", "cpu", "--workers", str(workers), "--block", str(block), "--tta", tta,
        "--min-object-voxels", "0", "--min-hole-voxels", "0", "--quiet",
    ]  # fmt: skip
    wait_for_quiet()
    with Meter() as meter:
        subprocess.run(command, check=True, capture_output=True)
    return {"seconds": meter.wall, "cpu_seconds": meter.children_cpu, "background": meter.background_cpu_fraction}


def time_plain(checkpoint: Path, raw: str, out: Path) -> dict:
    """The plain sliding window over the volume in memory, zarr in and out: one thread of work, passes of the
    training input one after the other (`predict_region` is exactly that loop: no threads, no zarr), batch norm
    folded into the convolutions as predict does."""
    shutil.rmtree(out, ignore_errors=True)
    wait_for_quiet()
    with Meter() as meter:
        model, _ = model_from_checkpoint(checkpoint)
        model = inference_model(model)
        volume = open_dataset(raw)
        data = volume[volume.roi]
        input_shape = model.config.input_shape
        context = model.config.context()
        padded = normalize(np.pad(data, [(c, c) for c in context], mode="reflect"))
        logits = predict_region(model, padded, input_shape, torch.device("cpu"))
        probabilities = (torch.sigmoid(torch.from_numpy(logits)) * 255).round().to(torch.uint8).numpy()
        out.mkdir(parents=True, exist_ok=True)
        zarr.save_array(str(out / "probabilities.zarr"), probabilities)
        zarr.save_array(str(out / "segmentation.zarr"), (probabilities > 127).astype(np.uint8))
    return {"seconds": meter.wall, "cpu_seconds": meter.self_cpu, "background": meter.background_cpu_fraction}


def median_case(runs: list[dict], voxels: int) -> dict:
    seconds = statistics.median(run["seconds"] for run in runs)
    return {
        "seconds_median": round(seconds, 2),
        "seconds_runs": [round(run["seconds"], 2) for run in runs],
        "voxels_per_second": round(voxels / seconds),
        "cpu_seconds_median": round(statistics.median(run["cpu_seconds"] for run in runs), 2),
        "background_cpu_fraction_max": round(max(run["background"] for run in runs), 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", type=int, nargs=3, default=[128, 384, 384])
    parser.add_argument("--networks", nargs="+", default=["bundled", "asem"], help="bundled, asem or NAME=PATH")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--block", type=int, default=256, help="write block edge of ours (default 256, predict's)")
    parser.add_argument("--tta", action="store_true", help="also time test-time augmentation (2 workers)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "predict_cpu.json")
    args = parser.parse_args()
    started = datetime.datetime.now(datetime.timezone.utc)
    digest = source_digest()
    shape = tuple(args.shape)
    voxels = int(np.prod(shape))
    cases = {}
    with tempfile.TemporaryDirectory(prefix="incasem_bench_predict_", dir="/tmp") as workdir:
        workdir = Path(workdir)
        raw = write_raw(sample_volume(shape), workdir / "cell.zarr")
        models = checkpoints(workdir, args.networks)
        for network in models:
            case = {}
            for workers in args.workers:
                runs = [
                    time_ours(models[network], raw, workdir / "cell.zarr/volumes/pred", workers, args.block)
                    for _ in range(args.repeats)
                ]
                case[f"ours_{workers}_workers"] = median_case(runs, voxels)
            runs = [time_plain(models[network], raw, workdir / "plain") for _ in range(args.repeats)]
            case["plain_pytorch"] = median_case(runs, voxels)
            for workers in args.workers:
                ours = case[f"ours_{workers}_workers"]["seconds_median"]
                case[f"speedup_{workers}_workers_vs_plain"] = round(case["plain_pytorch"]["seconds_median"] / ours, 3)
            if args.tta:
                tta = "mirror+transpose"
                runs = [
                    time_ours(models[network], raw, workdir / "cell.zarr/volumes/pred", 2, args.block, tta)
                    for _ in range(args.repeats)
                ]
                case["ours_2_workers_tta"] = median_case(runs, voxels)
                variants = dataset_meta(DatasetPath(workdir / "cell.zarr", "volumes/pred/probabilities"))["source"]
                case["tta_variants"] = variants["test_time_augmentation"]["variants"]
                case["tta_cost_2_workers"] = round(
                    case["ours_2_workers_tta"]["seconds_median"] / case["ours_2_workers"]["seconds_median"], 2
                )
            network_config, _ = model_from_checkpoint(models[network])
            case["network"] = network_config.config.model_dump(mode="json")
            cases[network] = case
            print(network, json.dumps(case), flush=True)
            write_result(report(started, digest, args, shape, cases), args.out)  # kept if a later step fails


def report(started, digest, args, shape, cases: dict) -> dict:
    return {
        "benchmark": "incasem-like predict end to end (zarr in -> probabilities + segmentation zarr) vs plain PyTorch",
        "date": started.isoformat(timespec="seconds"),
        "machine": {
            **machine(("incasem-like", "torch", "zarr", "daisy", "numpy")),
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        },
        "incasem_like_source": {"digest": digest, "changed_during_run": source_digest() != digest},
        "parameters": {
            "command": " ".join([Path(sys.executable).name, *sys.argv]),
            "shape": list(shape),
            "block": args.block,
            "repeats": args.repeats,
        },
        "cases": cases,
        "targets": {
            f"{network}_{workers}_workers_vs_plain_at_least_1.0": cases[network][f"speedup_{workers}_workers_vs_plain"]
            >= 1.0
            for network in cases
            for workers in args.workers
        },
    }


if __name__ == "__main__":
    main()
