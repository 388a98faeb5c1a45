"""Benchmark the host side of prediction with a null network: output voxels/s per CPU core of the whole path
read -> decode -> normalize -> batch -> copy -> (null network) -> quantize -> segment -> encode -> write.

The network is replaced by its null twin (`benchmarks/null_network/sitecustomize.py`: the centre of each pass's
input, cropped to the U-Net's output shape), so the network costs nothing. Everything else is the real command:
`incasem-like predict` with daisy workers, zarr in (real EM texture: the embedded Lucchi sample, mirrored to
`--shape`, blosc-zstd chunks) and probabilities and segmentation zarr out, with the method's network shapes (222^3
inputs, 128^3 kept per pass: the GPU default) at 1 and 2 workers. On a CPU the device work (normalization, passes,
quantization, thresholding) also runs on the host; on a GPU node it moves to the GPU, so the figure is a lower
bound of what the host can feed. Per core = output voxels per CPU second of the command and its workers (robust to
other load on the machine); the wall-clock figure is given beside it. A one-thread breakdown of one block says
what bounds the path.

    python benchmarks/host_path.py [--shape 768 768 768] [--workers 1 2] [--repeats 3]
"""

import argparse
import datetime
import importlib.util
import itertools
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from convert import Meter, machine, source_digest, wait_for_quiet, write_result  # noqa: E402  (shared helpers)
from predict import sample_volume, write_raw  # noqa: E402

from incasem_like.core.geometry import Coordinate, Roi  # noqa: E402
from incasem_like.nn.checkpoints import save_checkpoint  # noqa: E402
from incasem_like.nn.data_path import DataPath, SlabWriter, Timer  # noqa: E402
from incasem_like.nn.inference import Predictor, quantized  # noqa: E402
from incasem_like.nn.model import NetworkConfig, UNet3D  # noqa: E402
from incasem_like.nn.normalization import IntensityRange  # noqa: E402
from incasem_like.ops.morphology import segmentation_cutoff  # noqa: E402
from incasem_like.stages.predict import PassGrid  # noqa: E402
from incasem_like.store.datasets import DatasetPath, create_dataset, open_dataset  # noqa: E402

RESULT = Path(__file__).parent / "results" / "host_path_cpu.json"
NULL_NETWORK = Path(__file__).parent / "null_network"
STEP, BLOCK = 128, 256
TARGET_PER_CORE = 25e6


def null_network_class() -> type:
    """`NullNetwork` of the start-up hook, for the in-process breakdown."""
    spec = importlib.util.spec_from_file_location("null_network", NULL_NETWORK / "sitecustomize.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.NullNetwork


def time_command(checkpoint: Path, raw: str, out: Path, workers: int, io_threads: int, roi: list[int]) -> dict:
    """`incasem-like predict` of `roi` (voxels: offset, shape) with the null network: wall seconds and CPU seconds
    of the command and its workers."""
    shutil.rmtree(out, ignore_errors=True)
    command = [
        sys.executable, "-m", "incasem_like", "predict", "--checkpoint", str(checkpoint), "--raw", raw,
        "--out", str(out), "--device", "cpu", "--workers", str(workers), "--block", str(BLOCK), "--step", str(STEP),
        "--batch", "1", "--io-threads", str(io_threads), "--tta", "none", "--min-object-voxels", "0",
        "--min-hole-voxels", "0", "--quiet", "--roi", *map(str, roi),
    ]  # fmt: skip
    environment = {**os.environ, "INCASEM_LIKE_NULL_NETWORK": "1", "PYTHONPATH": str(NULL_NETWORK)}
    wait_for_quiet()
    with Meter() as meter:
        subprocess.run(command, check=True, capture_output=True, env=environment)
    return {"seconds": meter.wall, "cpu_seconds": meter.children_cpu, "background": meter.background_cpu_fraction}


def breakdown(raw: str, work: Path) -> dict:
    """CPU seconds per 10^8 output voxels of each part of the path over every block of `raw` (in daisy's raster
    order, one after the other: decoded chunks are reused as a worker reuses them), in one thread."""
    torch.set_num_threads(1)
    volume = open_dataset(raw)
    network = NetworkConfig()
    input_edge = network.input_edge_for(STEP)
    output_edge = network.output_shape((input_edge,) * 3)[0]
    context = volume.voxel_size * ((input_edge - output_edge) // 2)
    grid = PassGrid(volume.roi.begin, volume.voxel_size * STEP, volume.voxel_size * output_edge)
    intensity, cpu = IntensityRange(0.0, 255.0, False), torch.device("cpu")
    data_path = DataPath(volume, intensity, context / volume.voxel_size, cpu, 1, BLOCK)
    predictor = Predictor(null_network_class()(network), (input_edge,) * 3, cpu)
    outputs = [
        create_dataset(
            DatasetPath(work / "breakdown.zarr", name),
            volume.shape,
            volume.voxel_size,
            volume.offset,
            np.uint8,
            chunk_shape=(128,) * 3,
        )  # fmt: skip
        for name in ("probabilities", "segmentation")
    ]
    parts = ("read and decode", "normalize", "passes (cut, null network, sigmoid)", "quantize and segment",
             "encode and write")  # fmt: skip
    seconds = dict.fromkeys(parts, 0.0)
    cutoff = segmentation_cutoff(0.5)
    for block in itertools.product(*(range(0, edge, BLOCK) for edge in volume.shape)):
        write = Roi(volume.roi.begin + volume.voxel_size * Coordinate(block), volume.voxel_size * BLOCK)
        for region, keep in grid.rows(write.intersect(volume.roi)):
            marks = [time.process_time()]
            host = data_path.read(region)
            marks.append(time.process_time())
            normalized = data_path.on_device(host)
            marks.append(time.process_time())
            (probabilities,) = list(predictor.outputs([normalized]))
            marks.append(time.process_time())
            values = quantized(probabilities[((keep - region.offset) / volume.voxel_size).to_slices()])
            segmentation = (values >= cutoff).to(torch.uint8)
            marks.append(time.process_time())
            slabs = SlabWriter(outputs, data_path, chunk_edge=128 * volume.voxel_size[0], anchor=grid.anchor)
            slabs.add(keep, [values, segmentation])
            slabs.wait(Timer())
            marks.append(time.process_time())
            for part, begin, end in zip(parts, marks, marks[1:]):
                seconds[part] += end - begin
    voxels = int(np.prod(volume.shape))
    per_1e8 = {part: round(value * 1e8 / voxels, 2) for part, value in seconds.items()}
    total = sum(per_1e8.values())
    return {
        "output_voxels": voxels,
        "cpu_seconds_per_1e8_output_voxels": per_1e8,
        "total_cpu_seconds_per_1e8": round(total, 2),
        "voxels_per_cpu_second": round(1e8 / total),
    }


def interior_block(shape: tuple[int, ...]) -> list[int]:
    """The offset (voxels) of a block on the block grid away from the volume's faces where the volume allows."""
    return [BLOCK if edge >= 3 * BLOCK else 0 for edge in shape]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", type=int, nargs=3, default=[768, 768, 768])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--io-threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=RESULT)
    args = parser.parse_args()
    started, digest = datetime.datetime.now(datetime.UTC), source_digest()
    shape = tuple(args.shape)
    voxels = int(np.prod(shape))
    with tempfile.TemporaryDirectory(prefix="host_path_") as tmp:
        work = Path(tmp)
        raw = write_raw(sample_volume(shape), work / "cell.zarr")
        torch.manual_seed(0)
        checkpoint = save_checkpoint(work / "run", UNet3D(NetworkConfig()), None, 0, "mito", (5, 5, 5))
        cases = {}
        whole, block = [0, 0, 0, *shape], [*interior_block(shape), BLOCK, BLOCK, BLOCK]
        for workers in args.workers:
            runs = {
                name: [
                    time_command(checkpoint, raw, work / "cell.zarr/volumes/out", workers, args.io_threads, roi)
                    for _ in range(args.repeats)
                ]
                for name, roi in (("whole", whole), ("one_block", block))
            }
            seconds, cpu = (
                {name: statistics.median(run[key] for run in done) for name, done in runs.items()}
                for key in ("seconds", "cpu_seconds")
            )
            marginal = voxels - BLOCK**3
            cases[f"{workers}_workers"] = {
                "seconds_median": round(seconds["whole"], 2),
                "seconds_runs": [round(run["seconds"], 2) for run in runs["whole"]],
                "voxels_per_second": round(voxels / seconds["whole"]),
                "cpu_seconds_median": round(cpu["whole"], 2),
                "one_block_seconds_median": round(seconds["one_block"], 2),
                "one_block_cpu_seconds_median": round(cpu["one_block"], 2),
                "voxels_per_cpu_second": round(voxels / cpu["whole"]),
                "marginal_voxels_per_cpu_second": round(marginal / (cpu["whole"] - cpu["one_block"])),
                "marginal_voxels_per_second": round(marginal / (seconds["whole"] - seconds["one_block"])),
                "background_cpu_fraction_max": round(
                    max(run["background"] for done in runs.values() for run in done), 3
                ),
            }
            print(workers, "workers:", cases[f"{workers}_workers"], flush=True)
        parts = breakdown(raw, work)
    per_core = max(case["marginal_voxels_per_cpu_second"] for case in cases.values())
    result = {
        "benchmark": "incasem-like prediction host path with a null network: output voxels/s per CPU core",
        "date": started.isoformat(timespec="seconds"),
        "machine": machine(),
        "incasem_like_source": {"digest": digest, "changed_during_run": source_digest() != digest},
        "parameters": {
            "command": "python benchmarks/host_path.py " + " ".join(sys.argv[1:]),
            "shape": list(shape),
            "network": "the method's U-Net shapes (NetworkConfig defaults), null weights",
            "step": STEP,
            "block": BLOCK,
            "io_threads": args.io_threads,
            "repeats": args.repeats,
        },
        "cases": cases,
        "one_thread_breakdown": parts,
        "targets": {
            "voxels_per_cpu_second_per_core": per_core,
            "target": TARGET_PER_CORE,
            "met": per_core >= TARGET_PER_CORE,
            "bound_by": max(parts["cpu_seconds_per_1e8_output_voxels"].items(), key=lambda item: item[1])[0],
        },
    }
    write_result(result, args.out)


if __name__ == "__main__":
    main()
