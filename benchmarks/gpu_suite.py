"""The device suite (run by benchmarks/gpu_suite.sh): prediction and training throughput on one GPU, bf16's effect on
the segmentation and the GPU's utilisation, in one JSON (`benchmarks/results/gpu_<device>.json`).

Steps, printed as they go, most important first, each skipped (and recorded as skipped) once `--budget` seconds
have passed:
1. prediction with the real command (`incasem-like predict`, one worker per GPU, `--io-threads 8`), output
   voxels/s from command start to exit: the method's U-Net (random weights: speed does not depend on them) and
   the bundled mito model, on a synthetic cell (real EM texture: `--data` raw slices mirrored to `--cell` voxels)
   in fp32 and bf16, and on the `--data` volume itself in fp32 and bf16, with and without test-time augmentation;
2. bf16 agreement: the share of segmentation voxels that change between fp32 and bf16 on the `--data` volume
   (rule: < 0.1%);
3. training iterations/s of `configs/training/mito.yaml` (204^3 input) with `--data-workers` data workers on the
   `--data` volume with its mito labels, mirrored to twice the input along each axis (room for the augmentations);
4. GPU utilisation (nvidia-smi, every 0.5 s) per step.

`--device cpu --tiny` runs every step at tiny sizes (a test does, so the suite cannot rot without a GPU).

    bash benchmarks/gpu_suite.sh [--data DIR] [--cell 1024 1024 1024] [--budget 450] [--out FILE]

On the device machine: `bash benchmarks/gpu_carry.sh` here first (wheels its image lacks in .whl/, a Lucchi++
crop in .lucchi/), then carry both and run `bash benchmarks/gpu_suite.sh --data .lucchi --out "$OUT/gpu.json"`.
"""

import argparse
import datetime
import json
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import tifffile
import torch
import yaml

sys.path.insert(0, str(Path(__file__).parent))
from convert import machine, source_digest  # noqa: E402  (shared helpers)
from predict import mirrored, tiff_stack, write_raw  # noqa: E402
from train import prepare, time_training  # noqa: E402

from incasem_like.nn.checkpoints import save_checkpoint  # noqa: E402
from incasem_like.nn.model import NetworkConfig, UNet3D  # noqa: E402
from incasem_like.nn.models import bundled_model  # noqa: E402
from incasem_like.store.datasets import open_dataset  # noqa: E402
from incasem_like.workflow.demo import SAMPLE  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
TRAINING_CONFIG = REPO / "configs" / "training" / "mito.yaml"
TINY_NETWORK = {"feature_maps": 2, "downsamplings": 1, "input_shape": [20, 20, 20]}
TINY_CELL, TINY_DATA = (16, 64, 64), (8, 96, 96)
TARGETS = {"prediction_voxels_per_second": 100e6, "training_iterations_per_second": 8.0, "bf16_changed_share": 1e-3}


class Utilisation:
    """GPU utilisation and memory sampled by nvidia-smi every 0.5 s in a thread; `summary` since a mark."""

    def __init__(self):
        self.samples: list[tuple[float, float, float]] = []
        self.running = shutil.which("nvidia-smi") is not None
        if self.running:
            threading.Thread(target=self._sample, daemon=True).start()

    def _sample(self) -> None:
        query = ["nvidia-smi", "--query-gpu=utilization.gpu,memory.used", "--format=csv,noheader,nounits"]
        while self.running:
            output = subprocess.run(query, capture_output=True, text=True).stdout.split("\n")[0]
            if re.fullmatch(r"\s*\d+(\.\d+)?,\s*\d+(\.\d+)?\s*", output):
                utilisation, memory = (float(value) for value in output.split(","))
                self.samples.append((time.monotonic(), utilisation, memory))
            time.sleep(0.5)

    def summary(self, since: float) -> dict | None:
        samples = [(u, m) for t, u, m in self.samples if t >= since]
        if not samples:
            return None
        return {
            "utilisation_percent_mean": round(statistics.mean(u for u, _ in samples), 1),
            "utilisation_percent_max": max(u for u, _ in samples),
            "memory_mib_max": max(m for _, m in samples),
            "samples": len(samples),
        }


class Suite:
    """The steps, their results and the time budget."""

    def __init__(self, args: argparse.Namespace, work: Path):
        self.args, self.work = args, work
        self.started = time.monotonic()
        self.utilisation = Utilisation()
        self.result: dict = {"prediction": {}, "bf16_agreement": None, "training": None, "skipped": []}

    def within_budget(self, name: str) -> bool:
        elapsed = time.monotonic() - self.started
        if elapsed < self.args.budget:
            print(f"[{elapsed:6.0f} s] {name}", flush=True)
            return True
        print(f"[{elapsed:6.0f} s] {name}: skipped (budget of {self.args.budget:g} s spent)", flush=True)
        self.result["skipped"].append(name)
        return False

    def predict(self, name: str, checkpoint: Path, raw: str, precision: str, tta: str = "none") -> str | None:
        """One prediction case, timed; returns the output group (None if skipped)."""
        if not self.within_budget(f"predict {name}"):
            return None
        out = self.work / "out.zarr" / name
        command = [
            sys.executable, "-m", "incasem_like", "predict", "--checkpoint", str(checkpoint), "--raw", raw,
            "--out", str(out), "--device", self.args.device, "--precision", precision, "--tta", tta,
            "--io-threads", str(self.args.io_threads), "--block", str(self.args.block), "--chunk",
            str(min(128, self.args.block)), "--min-object-voxels", "0", "--min-hole-voxels", "0", "--quiet",
        ]  # fmt: skip
        if self.args.device == "cpu":
            command += ["--workers", "1"]
        mark = time.monotonic()
        completed = subprocess.run(command, capture_output=True, text=True)
        seconds = time.monotonic() - mark
        if completed.returncode:
            raise SystemExit(f"predict {name} failed: {completed.stderr.strip()}")
        voxels = int(np.prod(open_dataset(raw).shape))
        case = {
            "seconds": round(seconds, 2),
            "output_voxels": voxels,
            "voxels_per_second": round(voxels / seconds),
            "precision": precision,
            "tta": tta,
            "gpu": self.utilisation.summary(mark),
        }
        self.result["prediction"][name] = case
        print(f"         {case['voxels_per_second'] / 1e6:.2f} M voxels/s ({seconds:.1f} s)", flush=True)
        return str(out)

    def bf16_agreement(self, fp32: str | None, bf16: str | None) -> None:
        if fp32 is None or bf16 is None or not self.within_budget("bf16 agreement"):
            return
        first, second = (open_dataset(f"{out}/segmentation") for out in (fp32, bf16))
        changed = int(np.count_nonzero(first[first.roi] != second[second.roi]))
        total = int(np.prod(first.shape))
        self.result["bf16_agreement"] = {
            "segmentation_voxels_changed": changed,
            "voxels": total,
            "changed_share": changed / total,
            "rule": "< 0.1%",
            "holds": changed / total < TARGETS["bf16_changed_share"],
        }
        print(f"         {changed} of {total} segmentation voxels change in bf16", flush=True)

    def training(self, data: Path) -> None:
        if not self.within_budget("training"):
            return
        config = yaml.safe_load(TRAINING_CONFIG.read_text())
        if self.args.tiny:
            config["network"] = TINY_NETWORK
        config_path = self.work / "training.yaml"
        config_path.write_text(yaml.safe_dump(config))
        input_shape = NetworkConfig(**config.get("network", {})).input_shape
        container = prepare(training_data(data, input_shape, self.work / "training_data"), self.work)
        mark = time.monotonic()
        timing = time_training(config_path, container, self.work, self.args.data_workers, self.args)
        self.result["training"] = {**timing, "config": str(TRAINING_CONFIG.relative_to(REPO)),
                                   "gpu": self.utilisation.summary(mark)}  # fmt: skip
        print(f"         {timing['iterations_per_second']:.2f} it/s", flush=True)


def training_data(data: Path, input_shape: tuple[int, ...], folder: Path) -> Path:
    """`data`'s raw/ and mito/ slices mirrored to twice the network's input along each axis (room for the
    augmentations' context), as TIFF slices."""
    for name in ("raw", "mito"):
        volume = tiff_stack(data / name)
        shape = tuple(max(have, 2 * edge) for have, edge in zip(volume.shape, input_shape))
        (folder / name).mkdir(parents=True, exist_ok=True)
        for index, plane in enumerate(mirrored(volume, shape)):
            tifffile.imwrite(folder / name / f"{index:05d}.tif", plane)
    return folder


def synthetic_cell(data: Path, shape: tuple[int, int, int], container: Path) -> str:
    """`data`'s raw slices mirrored to `shape`, written as a uint8 zarr (real EM texture, any size)."""
    return write_raw(mirrored(tiff_stack(data / "raw"), shape), container)


def device_name(device: str) -> str:
    return torch.cuda.get_device_name(0) if device == "cuda" else machine()["cpu_model"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared/data/lucchi_pp_train",
                        help="folder with raw/ and mito/ TIFF slices (Lucchi++, or a crop of it)")  # fmt: skip
    parser.add_argument("--cell", type=int, nargs=3, default=[1024, 1024, 1024], help="synthetic cell shape")
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--tiny", action="store_true", help="tiny networks and volumes (a dry run of every step)")
    parser.add_argument("--budget", type=float, default=450, help="seconds after which remaining steps are skipped")
    parser.add_argument("--io-threads", type=int, default=8)
    parser.add_argument("--block", type=int, default=512, help="predict --block (512: two rows of 256^3 passes)")
    parser.add_argument("--data-workers", type=int, default=12)
    parser.add_argument("--iterations", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("gpu_suite: torch sees no CUDA GPU; run it on a GPU machine, or use --device cpu --tiny")
    started, digest = datetime.datetime.now(datetime.UTC), source_digest()
    name = device_name(args.device)
    out = (
        args.out or REPO / "benchmarks" / "results" / f"gpu_{re.sub(r'[^a-z0-9]+', '_', name.lower()).strip('_')}.json"
    )
    print(f"gpu_suite on {name}: budget {args.budget:.0f} s", flush=True)
    with tempfile.TemporaryDirectory(prefix="gpu_suite_") as tmp:
        work = Path(tmp)
        suite = Suite(args, work)
        data = Path(str(SAMPLE)) if args.tiny else args.data
        cell = synthetic_cell(data, TINY_CELL if args.tiny else tuple(args.cell), work / "cell.zarr")
        volume = synthetic_cell(data, TINY_DATA if args.tiny else stack_shape(data), work / "data.zarr")
        torch.manual_seed(0)
        network = NetworkConfig(**TINY_NETWORK) if args.tiny else NetworkConfig()
        networks = {
            "asem": save_checkpoint(work / "asem", UNet3D(network), None, 0, "mito", (5, 5, 5)),
            "bundled": bundled_model("mito"),
        }
        outputs = {}
        for net, checkpoint in networks.items():
            for precision in ("bf16", "fp32"):
                suite.predict(f"{net}_cell_{precision}", checkpoint, cell, precision, "none")
        for precision in ("bf16", "fp32"):
            outputs[precision] = suite.predict(
                f"bundled_data_{precision}", networks["bundled"], volume, precision, "none"
            )
        suite.bf16_agreement(outputs["fp32"], outputs["bf16"])
        suite.training(data)
        for net in networks:
            suite.predict(f"{net}_data_bf16_tta", networks[net], volume, "bf16", "mirror")
        suite.predict("asem_data_bf16", networks["asem"], volume, "bf16", "none")
        suite.utilisation.running = False
    result = {
        "benchmark": "incasem-like device suite: prediction and training throughput, bf16 agreement, utilisation",
        "date": started.isoformat(timespec="seconds"),
        "device": name,
        "machine": machine(),
        "incasem_like_source": {"digest": digest, "changed_during_run": source_digest() != digest},
        "parameters": {
            "command": "bash benchmarks/gpu_suite.sh " + " ".join(sys.argv[1:]),
            **{key: (str(value) if isinstance(value, Path) else value) for key, value in vars(args).items()},
        },  # fmt: skip
        **suite.result,
        "seconds": round(time.monotonic() - suite.started, 1),
        "targets": targets(suite.result),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result["targets"], indent=2), f"\nwritten: {out}", flush=True)


def stack_shape(data: Path) -> tuple[int, int, int]:
    paths = sorted((data / "raw").iterdir())
    return (len(paths), *tifffile.imread(paths[0]).shape)


def targets(result: dict) -> dict:
    """The issue's targets against what was measured (None where the step did not run)."""
    speeds = [case["voxels_per_second"] for key, case in result["prediction"].items() if "_cell_" in key]
    training = result["training"]
    return {
        "prediction_voxels_per_second_best": max(speeds, default=None),
        "prediction_target": TARGETS["prediction_voxels_per_second"],
        "training_iterations_per_second": training and training["iterations_per_second"],
        "training_target": TARGETS["training_iterations_per_second"],
        "bf16_rule_holds": result["bf16_agreement"] and result["bf16_agreement"]["holds"],
    }


if __name__ == "__main__":
    main()
