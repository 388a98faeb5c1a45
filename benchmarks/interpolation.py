"""Dense labels from sparse slices: `labels interpolate` on the Lucchi++ mitochondria
(benchmarks/results/interpolation.json).

The whole shared volume (../shared/data/lucchi_pp_train, 165 x 768 x 1024, 5 nm voxels) through the real commands:
convert the raw image and the annotation, keep only every 10th or every 20th slice of the annotation (0, 10, ...,
160 or 0, 20, ..., 160; the others set to 0), `labels interpolate` it with `--method shape` (shape interpolation
alone) and `--method random-walker` (the default), and score the result against the full annotation on the slices
in between (never the annotated ones; slices 161-164 lie after the last annotated slice and are left unsure, so
they are not scored either): Dice, IoU, and how the sure mask sorts the errors.

The walker's parameters (the defaults: beta, sigma, band, growth, margin) were chosen on the gaps of z 0-80 with
every 20th slice annotated; `report_z80_160` is the gaps of z 80-160, which took no part in that choice. Seconds are
the command's wall time on one worker (one block: the whole volume), and per 10^8 voxels of the volume, with the
1-minute load average before and after (other jobs on the machine slow it down).

    python benchmarks/interpolation.py --work /tmp/interpolation
"""

import argparse
import datetime
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent.parent))
from convert import machine, source_digest  # noqa: E402  (shared helpers)
from quality import cli  # noqa: E402

from incasem_like.store.datasets import DatasetPath, create_dataset, open_dataset, update_dataset_meta  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
RESULT = REPO / "benchmarks" / "results" / "interpolation.json"
DATA = REPO.parent / "shared" / "data" / "lucchi_pp_train"
CONTAINER = "lucchi.zarr"
STEPS = (10, 20)
METHODS = ("shape", "random-walker")
LAST_ANNOTATED = 160
PARTS = {"tune_z0_80": (0, 80), "report_z80_160": (80, 160), "whole_z0_160": (0, 160)}


def read(work: Path, name: str) -> np.ndarray:
    volume = open_dataset(str(work / CONTAINER / name))
    return volume[volume.roi]


def prepare(work: Path) -> np.ndarray:
    """Raw and labels converted (once), and the sparse labels of each step; returns the full annotation."""
    quiet = ("--workers", 2, "--quiet")
    if not (work / CONTAINER / "volumes/labels/mito").exists():
        cli("convert", DATA / "raw", f"{CONTAINER}/volumes/raw", "--voxel-size", 5, 5, 5, *quiet, cwd=work)
        cli("convert", DATA / "mito", f"{CONTAINER}/volumes/labels/mito", "--voxel-size", 5, 5, 5, "--labels", *quiet,
            cwd=work)  # fmt: skip
    labels = read(work, "volumes/labels/mito")
    full = open_dataset(str(work / CONTAINER / "volumes/labels/mito"))
    for step in STEPS:
        path = DatasetPath.parse(work / CONTAINER / f"volumes/labels/mito_every_{step}")
        if path.exists():
            continue
        sparse = np.zeros_like(labels)
        sparse[::step] = labels[::step]
        array = create_dataset(path, labels.shape, full.voxel_size, full.offset, labels.dtype, (64, 128, 128))
        array[array.roi] = sparse
        update_dataset_meta(path, complete=True)
    return labels > 0


def scores(result: np.ndarray, sure: np.ndarray, truth: np.ndarray, step: int, part: tuple[int, int]) -> dict:
    """Dice and IoU over the slices between annotated ones in `part`, and the sure mask's account of the errors."""
    between = np.zeros(len(truth), bool)
    between[part[0] : part[1]] = True
    between[::step] = False
    result, sure, truth = result[between], sure[between], truth[between]
    overlap, wrong = (result & truth).sum(), result != truth
    sure_overlap = (result & truth & sure).sum()
    return {
        "slices": int(between.sum()),
        "dice": round(float(2 * overlap / (result.sum() + truth.sum())), 4),
        "iou": round(float(overlap / (result | truth).sum()), 4),
        "unsure_share": round(float(1 - sure.mean()), 4),
        "errors_in_unsure_share": round(float((wrong & ~sure).sum() / max(wrong.sum(), 1)), 4),
        "dice_on_sure_voxels": round(float(2 * sure_overlap / ((result & sure).sum() + (truth & sure).sum())), 4),
    }


def run(step: int, method: str, truth: np.ndarray, work: Path) -> dict:
    out = f"volumes/labels/mito_from_{step}_{method}"
    command = ["labels", "interpolate", f"{CONTAINER}/volumes/labels/mito_every_{step}", f"{CONTAINER}/{out}",
               "--raw", f"{CONTAINER}/volumes/raw", "--annotated-slices", f"0:165:{step}", "--method", method,
               "--workers", 1, "--overwrite", "--quiet"]  # fmt: skip
    load = os.getloadavg()[0]
    started = time.perf_counter()
    cli(*command, cwd=work)
    seconds = time.perf_counter() - started
    result, sure = read(work, out) > 0, read(work, f"{out}_sure") > 0
    return {
        "command": "incasem-like " + " ".join(map(str, command)),
        "annotated_slices": f"0, {step}, ..., {LAST_ANNOTATED}",
        **{part: scores(result, sure, truth, step, bounds) for part, bounds in PARTS.items()},
        "seconds": round(seconds, 1),
        "voxels": int(truth.size),
        "seconds_per_1e8_voxels": round(seconds / truth.size * 1e8, 1),
        "load_average_before": round(load, 2),
        "load_average_after": round(os.getloadavg()[0], 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, required=True, help="working directory (the converted volume, outputs)")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    truth = prepare(args.work)
    result = {
        "data": "Lucchi++ mitochondria training volume (EPFL CVLab; annotation Casser et al. 2018), whole: "
        "165 x 768 x 1024 voxels of 5 nm",
        "scored": "the slices between annotated slices (annotated ones excluded), foreground = mitochondria",
        "tuning": "beta, sigma, band and growth (the defaults) were chosen on tune_z0_80 with every 20th slice "
        "annotated (the best Dice of a small grid), and margin 0.35 there too (about 3% of the voxels unsure, "
        "holding most errors); report_z80_160 took no part in any choice",
        "machine": machine(packages=("incasem-like", "numpy", "scipy", "zarr", "daisy")),
        "command": "python benchmarks/interpolation.py --work WORK",
        "rows": {},
    }
    for step in STEPS:
        for method in METHODS:
            row = run(step, method, truth, args.work)
            result["rows"][f"every_{step}_{method}"] = row
            report = row["report_z80_160"]
            print(f"every {step}, {method}: report Dice {report['dice']} IoU {report['iou']}, {row['seconds']} s")
    result["incasem_like_source"] = source_digest()
    result["date"] = datetime.datetime.now().isoformat(timespec="seconds")
    RESULT.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
