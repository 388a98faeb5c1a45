"""Object-level quality of `objects`, with and without `--split`, on Lucchi++ (benchmarks/results/objects_lucchi.json).

The split of ../shared/docs/quality.md: slices 125-144 take every choice, slices 145-164 only report. Through the
real commands: the bundled mito model predicts slices 125-164 (`incasem-like predict`, its own threshold and
clean-up, 2 workers), each 20-slice part of the segmentation and of the labels is copied into its own dataset,
and `incasem-like objects` labels them: the ground-truth instances are the connected components of the labels,
the predicted ones the components or the split instances. Scores: object-level precision, recall and F1 at IoU
0.5 (`incasem_like.ops.metrics.instance_matches`). The seed distance and reach are chosen by F1 on slices
125-144 from a grid; slices 145-164 are scored once for plain components and once for the chosen split.

    python benchmarks/objects.py --work /tmp/objects_bench
"""

import argparse
import datetime
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from convert import machine, source_digest  # noqa: E402  (shared helpers)
from quality import CHOICE, CONTAINER, REPORT, cli  # noqa: E402

from incasem_like.core.geometry import Coordinate, Roi  # noqa: E402
from incasem_like.ops.metrics import instance_matches, scores  # noqa: E402
from incasem_like.store.datasets import (  # noqa: E402
    DatasetPath,
    create_dataset,
    dataset_meta,
    open_dataset,
    update_dataset_meta,
)

REPO = Path(__file__).resolve().parent.parent
RESULT = REPO / "benchmarks" / "results" / "objects_lucchi.json"
PREDICTION = f"{CONTAINER}/volumes/predictions/bundled"
SEED_DISTANCES = (25, 50, 75, 100, 150)  # nm
REACHES = (150, 300, 600)  # nm, tried at the best seed distance
WORKERS = 2


def prepare(data: Path, work: Path) -> None:
    """Raw, CLAHE and mito labels of the Lucchi volume, and the bundled model's segmentation of slices 125-164."""
    quiet = ("--workers", WORKERS, "--quiet")
    if not (work / CONTAINER / "volumes/raw_clahe").exists():
        cli("convert", data / "raw", f"{CONTAINER}/volumes/raw", "--voxel-size", 5, 5, 5, *quiet, cwd=work)
        cli("convert", data / "mito", f"{CONTAINER}/volumes/labels/mito", "--voxel-size", 5, 5, 5, "--labels", *quiet,
            cwd=work)  # fmt: skip
        cli("clahe", f"{CONTAINER}/volumes/raw", f"{CONTAINER}/volumes/raw_clahe", *quiet, cwd=work)
    segmentation = DatasetPath.parse(str(work / PREDICTION / "segmentation"))
    if not (segmentation.exists() and dataset_meta(segmentation).get("complete")):
        cli("predict", "--checkpoint", "bundled:mito", "--raw", f"{CONTAINER}/volumes/raw_clahe", "--out", PREDICTION,
            "--roi", CHOICE[0], 0, 0, 40, 768, 1024, "--device", "cpu", "--overwrite", *quiet, cwd=work)  # fmt: skip


def part(source: str, first: int, slices: int, name: str, work: Path) -> str:
    """Slices [first, first + slices) of a dataset (whole-volume slice numbers) copied into a dataset of its own."""
    volume = open_dataset(str(work / source))
    roi = Roi(
        Coordinate((volume.voxel_size[0] * first, *volume.offset[1:])),
        Coordinate((volume.voxel_size[0] * slices, *volume.roi.shape[1:])),
    )
    out = DatasetPath.parse(str(work / CONTAINER / "volumes/objects_bench" / name))
    array = create_dataset(out, (slices, *volume.shape[1:]), volume.voxel_size, roi.begin, np.uint8, (20, 256, 256))
    array[array.roi] = (volume[roi] > 0).astype(np.uint8)
    update_dataset_meta(out, complete=True, kind="segmentation")
    return str(out)


def objects(segmentation: str, work: Path, seed_distance: float | None = None, reach: float | None = None) -> tuple:
    """`incasem-like objects` (with `--split` when a seed distance is given): the ids and the seconds it took."""
    suffix = "cc" if seed_distance is None else f"split_{seed_distance:g}_{reach:g}"
    labels, csv = f"{segmentation}_{suffix}", work / "tables" / f"{Path(segmentation).name}_{suffix}.csv"
    split = () if seed_distance is None else ("--split", "--seed-distance", seed_distance, "--reach", reach)
    started = time.perf_counter()
    cli("objects", segmentation, csv, "--labels-out", labels, *split, "--workers", WORKERS, "--overwrite", "--quiet",
        cwd=work)  # fmt: skip
    seconds = time.perf_counter() - started
    labels_volume = open_dataset(labels)
    return labels_volume[labels_volume.roi], round(seconds, 1)


def score(prediction: np.ndarray, truth: np.ndarray, seconds: float) -> dict:
    counts = instance_matches(prediction, truth, 0.5)
    return {
        **{key: round(value, 4) for key, value in scores(counts).items()},
        **counts,
        "predicted_objects": int(prediction.max()),
        "true_objects": int(truth.max()),
        "objects_seconds_2_workers": seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared/data/lucchi_pp_train")
    parser.add_argument("--work", type=Path, required=True, help="holds lucchi.zarr and the tables")
    parser.add_argument("--out", type=Path, default=RESULT)
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    (args.work / "tables").mkdir(exist_ok=True)
    started = time.perf_counter()
    prepare(args.data.resolve(), args.work)
    parts = {}
    for first, slices in (CHOICE, REPORT):
        predicted = part(f"{PREDICTION}/segmentation", first, slices, f"predicted_{first}", args.work)
        truth = part(f"{CONTAINER}/volumes/labels/mito", first, slices, f"truth_{first}", args.work)
        parts[first] = (predicted, objects(truth, args.work)[0])

    choice_segmentation, choice_truth = parts[CHOICE[0]]
    ids, seconds = objects(choice_segmentation, args.work)
    grid = [{"seed_distance_nm": None, "reach_nm": None, **score(ids, choice_truth, seconds)}]
    for seed_distance in SEED_DISTANCES:
        ids, seconds = objects(choice_segmentation, args.work, seed_distance, 300)
        grid.append({"seed_distance_nm": seed_distance, "reach_nm": 300, **score(ids, choice_truth, seconds)})
        print(f"  slices 125-144, seed distance {seed_distance} nm: F1 {grid[-1]['f1']}", flush=True)
    best_seed = max(grid[1:], key=lambda row: row["f1"])["seed_distance_nm"]
    for reach in REACHES:
        if reach != 300:
            ids, seconds = objects(choice_segmentation, args.work, best_seed, reach)
            grid.append({"seed_distance_nm": best_seed, "reach_nm": reach, **score(ids, choice_truth, seconds)})
    best = max(grid[1:], key=lambda row: (row["f1"], -row["reach_nm"]))
    print(f"  chosen: seed distance {best['seed_distance_nm']} nm, reach {best['reach_nm']} nm", flush=True)

    report_segmentation, report_truth = parts[REPORT[0]]
    plain_ids, plain_seconds = objects(report_segmentation, args.work)
    plain = score(plain_ids, report_truth, plain_seconds)
    split_ids, split_seconds = objects(report_segmentation, args.work, best["seed_distance_nm"], best["reach_nm"])
    result = {
        "benchmark": "object-level quality of objects with and without --split on Lucchi++ (benchmarks/objects.py)",
        "command": "python benchmarks/objects.py --work WORK",
        "split": {"choose": "slices 125-144", "report": "slices 145-164"},
        "prediction": "the bundled mito model (incasem-like predict --checkpoint bundled:mito, its threshold and "
        "clean-up), slices 125-164 of raw_clahe in one region; each 20-slice part labelled on its own",
        "truth": "connected components (6-connected) of the mito labels of the same slices",
        "metrics": "object-level precision, recall, F1: a predicted and a true object match when their IoU > 0.5",
        "chosen_on_slices_125_144": {key: best[key] for key in ("seed_distance_nm", "reach_nm")},
        "choice_grid_slices_125_144": grid,
        "held_out_slices_145_164": {
            "connected_components": plain,
            "split": score(split_ids, report_truth, split_seconds),
        },
        "benchmark_minutes": round((time.perf_counter() - started) / 60, 1),
        "incasem_like_source": source_digest(),
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "machine": machine(("incasem-like", "numpy", "scipy", "scikit-image", "kimimaro", "daisy", "zarr")),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    held = result["held_out_slices_145_164"]
    for name, row in held.items():
        print(f"  held out, {name}: F1 {row['f1']} (P {row['precision']}, R {row['recall']})")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
