"""Benchmark the training data path: wall and CPU seconds per batch of the gunpowder graph, in one process.

Builds the training graph of a config (default `configs/training/mito.yaml`: the ASEM network's 204^3 input ->
110^3, mirror + transpose, elastic deformation with x-y rotation, intensity scale/shift, rejection of blocks mostly
outside the cell mask and, with probability 0.9, of blocks with < 5% foreground) over the Lucchi volume (165 x 768 x
1024 at 5 nm, with its mito labels, their metric mask and a cell mask; prepared once in --work, ~3 minutes) and
times `BatchSource.batch` (no network) for --batches batches after --warmup, in a fresh process per variant and
round: wall seconds, CPU seconds (process time, every thread) and the load average. Raw is read from zarr chunks,
as from a whole cell (ASEM's cells are far larger than the limit below which a dataset is held in memory); Lucchi
has 165 slices, fewer than the 204 of an input, so raw is mirrored beyond them in z (the labels' 110 fit). Then
cProfile over --profile-batches more batches: the graph's nodes (cumulative) and the top functions (own time).

With --compare REV the package as of git revision REV is timed as well ("before"), alternating with the working
tree's ("after") round by round; both draw the same batches, compared voxel by voxel.

    python benchmarks/training_data.py [--config configs/training/mito.yaml] [--batches 20] [--warmup 3]
        [--rounds 2] [--profile-batches 5] [--compare REV] [--work DIR] [--out results/training_data_cpu.json]
"""

import argparse
import cProfile
import datetime
import hashlib
import importlib
import json
import os
import pstats
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from io import BytesIO
from pathlib import Path

import numpy as np

BENCHMARKS = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCHMARKS))
from convert import machine, source_digest, write_result  # noqa: E402  (the shared benchmark helpers)
from train import LUCCHI, prepare  # noqa: E402

# then off the path: benchmarks/sparse.py would stand in for the `sparse` package, which dask imports when it reads
sys.path[:] = [entry for entry in sys.path if Path(entry).resolve() != BENCHMARKS]

REPO = BENCHMARKS.parent
CONTAINER = "lucchi.zarr"
#: the datasets of a cell in mito.yaml: raw (CLAHE in the config: the cost is the same), labels, masks
CELL = {
    "raw": "volumes/raw",
    "labels": "volumes/labels/mito",
    "mask": "volumes/masks/cell",
    "metric_mask": "volumes/metric_masks/mito",
}


def prepare_cell(data: Path, work: Path) -> Path:
    """Lucchi's raw and mito labels as zarr (`train.prepare`), their metric mask (mito's defaults) and a cell mask
    (`mask`'s defaults), once."""
    from incasem_like.blockwise.runner import run_stage
    from incasem_like.stages.labels import MetricMaskStage, load_organelle
    from incasem_like.stages.mask import MaskStage

    container = work / CONTAINER
    if (container / CELL["mask"]).exists():
        return container
    prepare(data, work)
    metric = load_organelle("mito").metric_mask
    stages = (
        MetricMaskStage(
            input=str(container / CELL["labels"]),
            output=str(container / CELL["metric_mask"]),
            organelle="mito",
            dilation_voxels=metric.dilation_voxels,
            erosion_voxels=metric.erosion_voxels,
        ),
        MaskStage(input=str(container / CELL["raw"]), output=str(container / CELL["mask"])),
    )
    for stage in stages:
        run_stage(stage, workers=2, progress=False)
    return container


#: the graph's nodes whose cumulative time the profile reports: (label, module, qualified name)
NODES = (
    (
        "sampling: every attempt's reads and rejections (Reject.provide)",
        "incasem_like.training.pipeline",
        "Reject.provide",
    ),
    ("reading zarr chunks (ArraySource.provide)", "gunpowder", "ArraySource.provide"),
    ("padding (Pad.process)", "gunpowder", "Pad.process"),
    ("normalize raw, binarize masks (MapValues.process)", "incasem_like.training.pipeline", "MapValues.process"),
    ("mirror + transpose (SimpleAugment.process)", "gunpowder", "SimpleAugment.process"),
    ("elastic: the deformation field (ElasticAugment.prepare)", "gunpowder", "ElasticAugment.prepare"),
    ("elastic: interpolation of the arrays (ElasticAugment.process)", "gunpowder", "ElasticAugment.process"),
    ("intensity scale/shift (IntensityAugment.process)", "gunpowder", "IntensityAugment.process"),
    ("raw to [-1, 1] (IntensityScaleShift.process)", "gunpowder", "IntensityScaleShift.process"),
    ("loss weights (LossWeights.process)", "incasem_like.training.pipeline", "LossWeights.process"),
    ("request copies (BatchRequest.copy)", "gunpowder", "BatchRequest.copy"),
)


def _code_key(module: str, qualname: str) -> tuple:
    """The pstats key (file, first line, name) of a function."""
    owner, name = qualname.split(".")
    code = getattr(getattr(importlib.import_module(module), owner), name).__code__
    return code.co_filename, code.co_firstlineno, code.co_name


def profile(source, iterations: range) -> dict:
    """cProfile over `iterations`' batches: seconds per batch of the graph's nodes (cumulative) and of the top 15
    functions by own time."""
    profiler = cProfile.Profile()
    profiler.enable()
    for iteration in iterations:
        source.batch(iteration)
    profiler.disable()
    stats = pstats.Stats(profiler).stats  # type: ignore[attr-defined]
    count = len(iterations)
    total = sum(own for _, _, own, _, _ in stats.values())
    nodes = {}
    for label, module, qualname in NODES:
        entry = stats.get(_code_key(module, qualname))
        nodes[label] = round(entry[3] / count, 3) if entry else 0.0
    top = sorted(stats.items(), key=lambda item: -item[1][2])[:15]
    return {
        "batches": count,
        "seconds_per_batch_under_profiler": round(total / count, 3),
        "nodes_cumulative_seconds_per_batch": nodes,
        "top_functions_own_seconds_per_batch": {
            f"{Path(file).name}:{line}({name})": round(own / count, 3) for (file, line, name), (_, _, own, _, _) in top
        },
    }


def measure(args) -> dict:
    """Time the batches of this process's incasem_like (the one on PYTHONPATH); the result as a dict."""
    from incasem_like.training import pipeline
    from incasem_like.training.config import load_config

    pipeline.IN_MEMORY_BYTES = 0  # read chunks, as from a whole cell
    cell = {"container": str(args.work / CONTAINER), **CELL}
    overrides = {"training": [cell], "validation": [], "data_workers": 0, "run_dir": str(args.work / "run")}
    config = load_config(args.config, overrides)
    source = pipeline.BatchSource(config)
    for iteration in range(args.warmup):
        source.batch(iteration)
    load = [os.getloadavg()[0]]
    wall, cpu, labels, raw_sums = [], [], [], []
    timed = range(args.warmup, args.warmup + args.batches)
    for iteration in timed:
        start, start_cpu = time.perf_counter(), time.process_time()
        batch = source.batch(iteration)
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
        labels.append(hashlib.sha256(batch["labels"].tobytes()).hexdigest()[:16])
        raw_sums.append(float(batch["raw"].sum(dtype=np.float64)))
        if iteration == timed.start:
            np.save(args.work / f"raw_{args.variant}.npy", batch["raw"])
    load.append(os.getloadavg()[0])
    stop = timed.stop
    return {
        "wall_seconds": wall,
        "cpu_seconds": cpu,
        "load_average_1min": load,
        "labels_sha256": labels,
        "raw_sums": raw_sums,
        "profile": profile(source, range(stop, stop + args.profile_batches)) if args.profile_batches else None,
    }


def package_at(revision: str, into: Path) -> Path:
    """The incasem_like package of git `revision`, extracted into `into`."""
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", "--format=tar", revision, "incasem_like"],
        check=True,
        capture_output=True,
    ).stdout
    with tarfile.open(fileobj=BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    return into


def run_variant(args, variant: str, package_root: Path, round_: int) -> dict:
    """One round of one variant, in a fresh process with `package_root` first on the path."""
    command = [sys.executable, __file__, "--measure", "--variant", variant, "--config", str(args.config)]
    command += ["--work", str(args.work), "--batches", str(args.batches), "--warmup", str(args.warmup)]
    command += ["--profile-batches", str(args.profile_batches if round_ == 0 else 0)]
    env = {**os.environ, "PYTHONPATH": str(package_root)}
    done = subprocess.run(command, check=True, stdout=subprocess.PIPE, text=True, env=env)
    return json.loads(done.stdout.splitlines()[-1])


def summary(rounds: list[dict]) -> dict:
    """Medians over every timed batch of every round, the load averages and the first round's profile."""
    wall = [s for r in rounds for s in r["wall_seconds"]]
    cpu = [s for r in rounds for s in r["cpu_seconds"]]
    cpu_median = statistics.median(cpu)
    return {
        "timed_batches": len(wall),
        "wall_seconds_per_batch": {
            "median": round(statistics.median(wall), 3),
            "mean": round(statistics.mean(wall), 3),
        },
        "cpu_seconds_per_batch": {"median": round(cpu_median, 3), "mean": round(statistics.mean(cpu), 3)},
        "batches_per_second_per_core": round(1 / cpu_median, 3),
        "load_average_1min_per_round": [r["load_average_1min"] for r in rounds],
        "profile": rounds[0]["profile"],
    }


def agreement(work: Path, before: list[dict], after: list[dict]) -> dict:
    """How the two variants' batches compare: labels, raw sums, and raw voxel by voxel in the first timed batch."""
    first = [np.load(work / f"raw_{variant}.npy") for variant in ("before", "after")]
    sums = zip(before[0]["raw_sums"], after[0]["raw_sums"])
    return {
        "labels_identical_batches": sum(a == b for a, b in zip(before[0]["labels_sha256"], after[0]["labels_sha256"])),
        "batches": len(before[0]["labels_sha256"]),
        "raw_sum_largest_relative_difference": max(abs(a - b) / max(abs(a), 1e-9) for a, b in sums),
        "first_batch_raw_largest_difference": float(np.abs(first[0] - first[1]).max()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, default=REPO / "configs" / "training" / "mito.yaml")
    parser.add_argument("--data", type=Path, default=LUCCHI, help="folder with raw/ and mito/ TIFF slices")
    parser.add_argument("--work", type=Path, help="folder for the prepared zarr (kept; default: a temporary one)")
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2, help="fresh processes per variant, alternating")
    parser.add_argument("--profile-batches", type=int, default=5, help="profiled after the first round's timing")
    parser.add_argument("--compare", metavar="REV", help="also time the package of this git revision")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "training_data_cpu.json")
    parser.add_argument("--measure", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--variant", default="after", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(args)))
        return
    started = datetime.datetime.now(datetime.timezone.utc)
    digest = source_digest()
    with tempfile.TemporaryDirectory(prefix="incasem_bench_data_", dir="/tmp") as scratch:
        args.work = args.work or Path(scratch)
        prepare_cell(args.data, args.work)
        roots = {"after": REPO}
        if args.compare:
            roots = {"before": package_at(args.compare, Path(scratch) / "before"), **roots}
        rounds: dict[str, list[dict]] = {variant: [] for variant in roots}
        for round_ in range(args.rounds):
            for variant, root in roots.items():
                rounds[variant].append(run_variant(args, variant, root, round_))
                print(variant, round_, statistics.median(rounds[variant][-1]["cpu_seconds"]), flush=True)
        cases = {variant: summary(results) for variant, results in rounds.items()}
        cases["after"]["package"] = "working tree"
        if args.compare:
            cases["before"]["package"] = f"git {args.compare}"
            same = agreement(args.work, rounds["before"], rounds["after"])
    from incasem_like.training.config import load_config

    config = load_config(args.config, {"training": [{"container": "x", "labels": "y"}]})
    after = cases["after"]["batches_per_second_per_core"]
    result = {
        "benchmark": "incasem-like training data path: seconds per batch of the gunpowder graph, one process",
        "date": started.isoformat(timespec="seconds"),
        "machine": machine(("incasem-like", "gunpowder", "scipy", "zarr", "numpy")),
        "incasem_like_source": {"digest": digest, "changed_during_run": source_digest() != digest},
        "parameters": {
            "command": " ".join([Path(sys.executable).name, *sys.argv]),
            "config": str(args.config.resolve().relative_to(REPO)),
            "input_shape": list(config.network.input_shape),
            "output_shape": list(config.network.output_shape()),
            "batch_size": config.batch_size,
            "augmentation": config.augmentation.model_dump(mode="json"),
            "sampling": config.sampling.model_dump(mode="json"),
            "data": "Lucchi++ training volume, 165 x 768 x 1024 at 5 nm, raw mirrored beyond its 165 slices in z; "
            "cell mask (`mask` defaults) and mito metric mask; read from zarr chunks",
            "batches": args.batches,
            "warmup": args.warmup,
            "rounds": args.rounds,
        },
        "cases": cases,
        **({"before_and_after_batches": same} if args.compare else {}),
        "targets": {"batches_per_second_per_core": {"target": 0.5, "measured": after, "met": after >= 0.5}},
    }
    write_result(result, args.out)


if __name__ == "__main__":
    main()
