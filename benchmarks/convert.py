"""Benchmark `incasem-like convert` (TIFF slices -> OME-Zarr) against just reading the same TIFFs.

For each case (cubes of edge `--sizes`, plus a z-only growth case of `--tall` slices of the smallest y-x size)
it:

1. writes a synthetic uint8 stack, one zlib-compressed 2D TIFF per z slice (smoothed noise with membrane-like
   contours, a texture drifting through z and per-slice shot noise, so it compresses about as poorly as
   FIB-SEM data), generated slice by slice from a fixed seed;
2. times the read-only baseline: `tifffile.imread` of every slice, in this one process;
3. runs the `incasem-like convert` CLI as a subprocess with 1 and 2 workers, into a fresh output each time,
   recording the end-to-end wall time (interpreter startup and the slice header check included), the run
   summary's `seconds` (the blockwise part only), the CPU time of the whole process tree, and its peak RSS:
   the sum over the CLI process and all its descendants, sampled every 50 ms, and the largest single process;
4. spot-checks a few slices of every output against the TIFFs, so a broken run cannot be reported.

Every measurement is repeated `--repeats` times (worker counts interleaved); medians give the ratios
convert/read-only (voxels/s) and 2-worker/1-worker, and the issue's targets are checked: >= 0.8x the
read-only rate with 2 workers, and peak RSS flat in stack size (the stack of `--tall` slices within 1.5x of
the smallest cube). Cube growth is reported too, for information: a block holds one chunk of whole y-x slices,
so memory per worker follows the slice area, not the number of slices.

The machine may be shared: before each measurement the script waits for the CPUs to go quiet, and it records
the share of CPU capacity other processes used during the measurement (`background_cpu_fraction`). The
stacks stay in the page cache (far more RAM than data), so this measures CPU cost (decode, encode, process
start-up), not disk speed.

    python benchmarks/convert.py [--sizes 512 1024] [--tall 2048] [--repeats 3] [--out benchmarks/results/convert.json]
"""

import argparse
import datetime
import hashlib
import importlib.util
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np
import psutil
import tifffile
import zarr
from scipy.ndimage import gaussian_filter

SEED = 20260101
VOXEL_SIZE = (5, 5, 5)
CHUNK = 128
WORKER_COUNTS = (1, 2)
RSS_SAMPLE_INTERVAL = 0.05
QUIET_CPU_PERCENT = 15
QUIET_MAX_WAIT = 180
THROUGHPUT_TARGET = 0.8
RSS_FLAT_TOLERANCE = 1.5
CLI = Path(sys.executable).with_name("incasem-like")


def write_synthetic_stack(directory: Path, shape: tuple[int, int, int], seed: int = SEED) -> None:
    """One zlib TIFF per z slice; only two 2D texture fields and one slice are ever in memory."""
    depth, height, width = shape
    rng = np.random.default_rng(seed)
    pad = 64
    field_shape = (height + 2 * pad, width + 2 * pad)
    blobs = gaussian_filter(rng.standard_normal(field_shape, dtype=np.float32), sigma=24)
    blobs /= blobs.std()
    grain = gaussian_filter(rng.standard_normal(field_shape, dtype=np.float32), sigma=2)
    grain /= grain.std()
    directory.mkdir(parents=True)
    for z in range(depth):
        # the texture drifts along a bounded path through z: neighbouring slices differ but stay related
        dy = pad + round(pad * np.sin(z / 37))
        dx = pad + round(pad * np.cos(z / 53))
        blob = blobs[dy : dy + height, dx : dx + width]
        image = 120 + 45 * np.tanh(blob) + 18 * grain[pad : pad + height, dx : dx + width]
        image += 8 * rng.standard_normal((height, width), dtype=np.float32)
        image[np.abs(blob - 0.3 * np.sin(z / 20)) < 0.06] -= 70  # dark membranes on the blob contours
        tifffile.imwrite(directory / f"slice_{z:05d}.tif", np.clip(image, 0, 255).astype(np.uint8), compression="zlib")


def busy_cpu_seconds() -> float:
    """CPU seconds the whole machine has been busy (all processes, all cores) since boot."""
    times = psutil.cpu_times()
    return sum(times) - times.idle - getattr(times, "iowait", 0.0)


def wait_for_quiet() -> None:
    """Wait (at most QUIET_MAX_WAIT s) until other processes leave the CPUs mostly idle."""
    deadline = time.monotonic() + QUIET_MAX_WAIT
    while psutil.cpu_percent(interval=1) > QUIET_CPU_PERCENT and time.monotonic() < deadline:
        pass


class Meter:
    """Context manager: wall time, CPU time of this process and of its reaped children (with all their
    descendants), and the share of the machine's CPU capacity used by everything else meanwhile."""

    def __enter__(self) -> "Meter":
        self._self_cpu = time.process_time()
        self._children_cpu = self._reaped_children_cpu()
        self._busy = busy_cpu_seconds()
        self._start = time.perf_counter()
        return self

    def __exit__(self, *exc_info) -> None:
        self.wall = time.perf_counter() - self._start
        busy = busy_cpu_seconds() - self._busy
        self.self_cpu = time.process_time() - self._self_cpu
        self.children_cpu = self._reaped_children_cpu() - self._children_cpu
        other = max(0.0, busy - self.self_cpu - self.children_cpu)
        self.background_cpu_fraction = other / (self.wall * os.cpu_count())

    @staticmethod
    def _reaped_children_cpu() -> float:
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        return usage.ru_utime + usage.ru_stime


def time_read_only(files: list[Path]) -> dict:
    """Read and decode every slice with tifffile in this process."""
    wait_for_quiet()
    with Meter() as meter:
        for path in files:
            tifffile.imread(path)
    return {
        "wall_seconds": round(meter.wall, 3),
        "cpu_seconds": round(meter.self_cpu, 3),
        "background_cpu_fraction": round(meter.background_cpu_fraction, 3),
    }


class TreeSampler(threading.Thread):
    """Samples RSS and CPU times of a process and all its descendants until it exits."""

    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.root = psutil.Process(pid)
        self.peak_tree = 0
        self.peak_single = 0
        self.max_processes = 0
        self.cpu = {}  # pid -> last seen user + system seconds

    def run(self) -> None:
        while True:
            try:
                if self.root.status() == psutil.STATUS_ZOMBIE:
                    break
                processes = [self.root, *self.root.children(recursive=True)]
            except psutil.NoSuchProcess:
                break
            rss = []
            for process in processes:
                try:
                    with process.oneshot():
                        rss.append(process.memory_info().rss)
                        times = process.cpu_times()
                        self.cpu[process.pid] = times.user + times.system
                except psutil.NoSuchProcess:
                    pass
            self.peak_tree = max(self.peak_tree, sum(rss))
            self.peak_single = max(self.peak_single, max(rss, default=0))
            self.max_processes = max(self.max_processes, len(rss))
            time.sleep(RSS_SAMPLE_INTERVAL)

    @property
    def sampled_cpu(self) -> float:
        return sum(self.cpu.values())


def time_convert(source: Path, output: Path, workers: int) -> dict:
    """Run the CLI once into a fresh `output`: wall and summary time, CPU time and peak RSS of its tree."""
    shutil.rmtree(output.parent.parent, ignore_errors=True)  # the whole container
    os.sync()  # flush the previous run's writes before timing
    command = [
        str(CLI),
        "convert",
        str(source),
        str(output),
        "--voxel-size",
        *map(str, VOXEL_SIZE),
        "--chunk",
        str(CHUNK),
        "--workers",
        str(workers),
        "--quiet",
    ]
    wait_for_quiet()
    with Meter() as meter:
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        sampler = TreeSampler(process.pid)
        sampler.start()
        log, _ = process.communicate()
    sampler.join()
    if process.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({process.returncode}):\n{log}")
    summary = json.loads((output / ".incasem_run" / "summary.json").read_text())
    if not summary["complete"] or summary["blocks_processed"] != summary["blocks_total"]:
        raise RuntimeError(f"incomplete run: {summary}")
    return {
        "wall_seconds": round(meter.wall, 3),
        "summary_seconds": summary["seconds"],
        "cpu_seconds": round(meter.children_cpu, 3),
        "background_cpu_fraction": round(meter.background_cpu_fraction, 3),
        "blocks_processed": summary["blocks_processed"],
        "peak_rss_tree_mib": round(sampler.peak_tree / 2**20, 1),
        "peak_rss_single_mib": round(sampler.peak_single / 2**20, 1),
        "max_processes": sampler.max_processes,
    }


def spot_check(files: list[Path], output: Path) -> None:
    """Compare the first, middle, last and two random slices of the output with the TIFFs."""
    array = zarr.open_array(output / "s0", mode="r")
    if array.shape != (len(files), *tifffile.imread(files[0]).shape):
        raise RuntimeError(f"{output}: shape {array.shape} does not match the stack")
    rng = np.random.default_rng()
    for z in {0, len(files) // 2, len(files) - 1, *rng.integers(0, len(files), 2).tolist()}:
        if not np.array_equal(array[z], tifffile.imread(files[z])):
            raise RuntimeError(f"{output}: slice {z} differs from {files[z]}")


def median_of(runs: list[dict], keys: tuple[str, ...]) -> dict:
    return {key: statistics.median(run[key] for run in runs) for key in keys}


def benchmark_case(shape: tuple[int, int, int], workdir: Path, repeats: int) -> dict:
    """Generate one stack, time the read-only baseline and the conversions, and summarise them."""
    name = "x".join(map(str, shape))
    source = workdir / f"stack_{name}"
    output = workdir / f"out_{name}.zarr" / "volumes" / "raw"
    print(f"[{name}] generating {source}", flush=True)
    start = time.perf_counter()
    write_synthetic_stack(source, shape)
    files = sorted(source.glob("*.tif"))
    voxels = int(np.prod(shape))
    stored = sum(path.stat().st_size for path in files)
    case = {
        "shape_zyx": list(shape),
        "voxels": voxels,
        "generate_seconds": round(time.perf_counter() - start, 1),
        "tiff_bytes": stored,
        "tiff_compression_ratio": round(voxels / stored, 3),
    }

    time_read_only(files)  # warm-up, so every timed run finds the same page-cache state
    reads = [time_read_only(files) for _ in range(repeats)]
    print(f"[{name}] read-only: {reads}", flush=True)
    converts = {workers: [] for workers in WORKER_COUNTS}
    for _ in range(repeats):  # interleaved, so slow drift affects both worker counts alike
        for workers in WORKER_COUNTS:
            run = time_convert(source, output, workers)
            spot_check(files, output)
            print(f"[{name}] {workers} worker(s): {run}", flush=True)
            converts[workers].append(run)
    shutil.rmtree(output.parent.parent)
    shutil.rmtree(source)

    read = median_of(reads, ("wall_seconds", "cpu_seconds", "background_cpu_fraction"))
    case["read_only"] = {"runs": reads, "median": read, "voxels_per_second": round(voxels / read["wall_seconds"])}
    case["convert"] = {}
    for workers, runs in converts.items():
        median = median_of(
            runs,
            (
                "wall_seconds",
                "summary_seconds",
                "cpu_seconds",
                "background_cpu_fraction",
                "peak_rss_tree_mib",
                "peak_rss_single_mib",
            ),
        )
        case["convert"][f"{workers}_workers"] = {
            "runs": runs,
            "median": median,
            "voxels_per_second_wall": round(voxels / median["wall_seconds"]),
            "voxels_per_second_summary": round(voxels / median["summary_seconds"]),
            # rate relative to read-only: end to end, blockwise part only, and CPU work per voxel
            "ratio_to_read_only_wall": round(read["wall_seconds"] / median["wall_seconds"], 3),
            "ratio_to_read_only_summary": round(read["wall_seconds"] / median["summary_seconds"], 3),
            "cpu_ratio_to_read_only": round(median["cpu_seconds"] / read["cpu_seconds"], 3),
        }
    one, two = (case["convert"][f"{workers}_workers"]["median"] for workers in WORKER_COUNTS)
    case["speedup_2_over_1_workers"] = {
        "wall": round(one["wall_seconds"] / two["wall_seconds"], 3),
        "summary": round(one["summary_seconds"] / two["summary_seconds"], 3),
    }
    return case


def rss_growth(cases: dict, small: str, large: str) -> dict:
    """Median peak RSS of the process tree for `large` relative to `small`, per worker count."""
    growth = {}
    for workers in WORKER_COUNTS:
        key = f"{workers}_workers"
        small_mib = cases[small]["convert"][key]["median"]["peak_rss_tree_mib"]
        large_mib = cases[large]["convert"][key]["median"]["peak_rss_tree_mib"]
        growth[key] = {small: small_mib, large: large_mib, "ratio": round(large_mib / small_mib, 3)}
    return growth


def rss_flat(cases: dict, small: str, large: str) -> dict:
    """The flatness target: `large`'s peak RSS within the tolerance of `small`'s, for every worker count."""
    growth = rss_growth(cases, small, large)
    for entry in growth.values():
        entry["flat"] = entry["ratio"] <= RSS_FLAT_TOLERANCE
    return {"tolerance": RSS_FLAT_TOLERANCE, **growth, "met": all(g["flat"] for g in growth.values())}


def check_targets(cases: dict, sizes: list[int], tall: int) -> dict:
    """The issue's targets: >= 0.8x read-only with 2 workers (per case), peak RSS flat in stack size."""
    throughput = {}
    for name, case in cases.items():
        two = case["convert"]["2_workers"]
        throughput[name] = {
            "ratio_wall": two["ratio_to_read_only_wall"],
            "ratio_summary": two["ratio_to_read_only_summary"],
            "met_wall": two["ratio_to_read_only_wall"] >= THROUGHPUT_TARGET,
            "met_summary": two["ratio_to_read_only_summary"] >= THROUGHPUT_TARGET,
        }
    targets = {"throughput_2_workers_vs_read_only": {"target": THROUGHPUT_TARGET, **throughput}}
    edge = min(sizes)
    smallest = f"{edge}x{edge}x{edge}"
    if tall:
        targets["rss_flat_z_only_growth"] = rss_flat(cases, smallest, f"{tall}x{edge}x{edge}")
    if len(sizes) > 1:
        # Not a target: a block is one chunk of whole slices, so memory per worker follows the slice area.
        biggest = f"{max(sizes)}x{max(sizes)}x{max(sizes)}"
        targets["rss_cube_growth_informational"] = {
            "note": "each block holds one chunk of whole y-x slices: memory per worker scales with the slice area",
            **rss_growth(cases, smallest, biggest),
        }
    return targets


def source_digest() -> str:
    """Hash of the incasem_like sources, to tell whether they changed while the benchmark ran."""
    root = Path(importlib.util.find_spec("incasem_like").origin).parent
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        digest.update(path.relative_to(root).as_posix().encode() + path.read_bytes())
    return digest.hexdigest()[:16]


def machine(packages=("incasem-like", "zarr", "numcodecs", "tifffile", "daisy", "numpy", "psutil")) -> dict:
    """The machine a benchmark ran on, with the versions of `packages`."""
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    return {
        "platform": platform.platform(),
        "cpu_model": cpu,
        "cores": os.cpu_count(),
        "ram_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "packages": {name: installed_version(name) for name in packages},
    }


def installed_version(name: str) -> str:
    """The installed version of `name`; for a checkout run from source (on a device machine), `source`."""
    try:
        return version(name)
    except PackageNotFoundError:
        return "source" if name == "incasem-like" else "not installed"


def write_result(result: dict, out: Path) -> None:
    """Write a benchmark's JSON result and print its targets (warning if the sources changed mid-run)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result["targets"], indent=2))
    if result["incasem_like_source"]["changed_during_run"]:
        print("warning: incasem_like sources changed during the run; the cases may have timed different code")
    print(f"wrote {out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[512, 1024], help="cube edges in voxels")
    parser.add_argument(
        "--tall", type=int, default=2048, help="slices of the z-only growth case (y-x of the smallest cube); 0 skips it"
    )
    parser.add_argument("--repeats", type=int, default=3, help="repeats of every measurement (medians reported)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "convert.json")
    args = parser.parse_args()
    sizes = sorted(args.sizes)

    shapes = [(size, size, size) for size in sizes]
    if args.tall:
        shapes.append((args.tall, sizes[0], sizes[0]))
    started = datetime.datetime.now(datetime.timezone.utc)
    digest = source_digest()
    cases = {}
    with tempfile.TemporaryDirectory(prefix="incasem_bench_", dir="/tmp") as workdir:
        for shape in shapes:
            cases["x".join(map(str, shape))] = benchmark_case(shape, Path(workdir), args.repeats)

    result = {
        "benchmark": "incasem-like convert (TIFF slices -> OME-Zarr) vs tifffile read-only",
        "date": started.isoformat(timespec="seconds"),
        "duration_seconds": round((datetime.datetime.now(datetime.timezone.utc) - started).total_seconds()),
        "machine": machine(),
        "incasem_like_source": {"digest": digest, "changed_during_run": source_digest() != digest},
        "parameters": {
            "command": " ".join([Path(sys.executable).name, *sys.argv]),
            "sizes": sizes,
            "tall": args.tall,
            "repeats": args.repeats,
            "seed": SEED,
            "dtype": "uint8",
            "tiff_compression": "zlib",
            "voxel_size": list(VOXEL_SIZE),
            "chunk": CHUNK,
            "worker_counts": list(WORKER_COUNTS),
            "rss_sample_interval_s": RSS_SAMPLE_INTERVAL,
            "quiet_cpu_percent": QUIET_CPU_PERCENT,
        },
        "cases": cases,
        "targets": check_targets(cases, sizes, args.tall),
    }
    write_result(result, args.out)


if __name__ == "__main__":
    main()
