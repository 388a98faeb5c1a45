"""Segmentation quality on the Lucchi++ volume: the recipe table (benchmarks/results/quality_lucchi.json).

The split of ../shared/docs/quality.md: slices 0-124 train; slices 125-144 take every choice (checkpoint,
threshold, test-time augmentation, clean-up); slices 145-164 only report, once per row. Each recipe is a config in
configs/training/lucchi_recipes/ (or configs/training/lucchi_mito_cpu.yaml, the bundled model's), trained with the
time budget it sets on this machine (a run the benchmark finds unfinished is resumed: the budget counts every
invocation); `bundled` is the model the package ships, not trained here. For each row, through the real commands:

1. choose: the checkpoint and threshold by the field's F1 (every voxel) on slices 125-144 (the training run's
   validation sweep);
2. predict slices 125-164 as one region of the whole volume (`incasem-like predict --roi`, 2 workers: real context
   above, mirrored below; the prediction speed is this run's), without or with test-time augmentation;
3. with augmentation or clean-up, the threshold is chosen again on slices 125-144 of that prediction, and the
   clean-up (objects removed, then holes filled, below sizes from a grid) by F1 there;
4. report: `incasem-like evaluate` on slices 145-164: the field's metric (every voxel: F1 = Dice, IoU, precision,
   recall) and ASEM's (outside the metric exclusion zone).

    python benchmarks/quality.py --work /tmp/quality --rows bundled 2d 2d+tta 2d+tta+clean
    python benchmarks/quality.py --work /tmp/quality --rows lucchi_mito_cpu+tta+clean --export mito_lucchi_cpu.pt

A row is `RECIPE[+tta][+clean]`. Rows already in the result file are kept unless named again; `--export` writes
the last row's model with its choices (threshold, augmentation, clean-up) and held-out figures as provenance.
"""

import argparse
import datetime
import hashlib
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from convert import machine, source_digest  # noqa: E402  (shared helpers)

from incasem_like.nn.checkpoints import export_weights, load_checkpoint  # noqa: E402
from incasem_like.nn.model import NetworkConfig  # noqa: E402
from incasem_like.nn.models import bundled_model  # noqa: E402
from incasem_like.stages.predict import default_step  # noqa: E402
from incasem_like.training.config import load_config  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
RESULT = REPO / "benchmarks" / "results" / "quality_lucchi.json"
CONTAINER = "lucchi.zarr"
CHOICE = (125, 20)  # first slice, slices
REPORT = (145, 20)
PREDICTED = (125, 40)  # one prediction covers both
CLEAN_UP_GRID = [(objects, holes) for objects in (0, 500, 2000, 8000) for holes in (0, 500, 2000, 8000)]
WORKERS = 2
#: (checkpoint, tta) -> voxels/s of its prediction, made once per benchmark run
PREDICTED_ALREADY: dict[tuple[str, str], float] = {}


def cli(*args, cwd: Path) -> str:
    """Run `incasem-like ARGS` in `cwd`; its stdout (a failure raises with its stderr)."""
    command = [sys.executable, "-m", "incasem_like", *map(str, args)]
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True)
    if result.returncode:
        raise RuntimeError(f"{' '.join(command)} failed:\n{result.stderr[-3000:]}")
    return result.stdout


def prepare(data: Path, work: Path) -> None:
    """The Lucchi volume as the recipes read it: raw, CLAHE, mito labels and their metric mask."""
    if (work / CONTAINER / "volumes/metric_masks/mito").exists():
        return
    quiet = ("--workers", WORKERS, "--quiet")
    cli("convert", data / "raw", f"{CONTAINER}/volumes/raw", "--voxel-size", 5, 5, 5, *quiet, cwd=work)
    cli("convert", data / "mito", f"{CONTAINER}/volumes/labels/mito", "--voxel-size", 5, 5, 5, "--labels", *quiet,
        cwd=work)  # fmt: skip
    cli("clahe", f"{CONTAINER}/volumes/raw", f"{CONTAINER}/volumes/raw_clahe", *quiet, cwd=work)
    cli("labels", "metric-mask", f"{CONTAINER}/volumes/labels/mito", f"{CONTAINER}/volumes/metric_masks/mito",
        "--organelle", "mito", *quiet, cwd=work)  # fmt: skip


def recipe_config(recipe: str) -> Path:
    named = REPO / "configs" / "training" / "lucchi_recipes" / f"{recipe}.yaml"
    return named if named.exists() else REPO / "configs" / "training" / f"{recipe}.yaml"


def train_run(config_path: Path, work: Path) -> dict:
    """Train (or resume, or reuse) the run of a training config; its choice, its summary and what it cost."""
    config = load_config(config_path)
    run = work / config.run_dir
    summary_path = run / "summary.json"
    finished = summary_path.exists() and _budget_spent(json.loads(summary_path.read_text()), config)
    if not finished:
        resume = ("--resume",) if any((run / "checkpoints").glob("iteration_*.pt")) else ()
        cli("train", config_path, "--quiet", *resume, cwd=work)
    summary = json.loads(summary_path.read_text())
    best = summary["best_at_swept_threshold"]
    return {
        "config": str(config_path.relative_to(REPO)) if config_path.is_relative_to(REPO) else str(config_path),
        "checkpoint": str(run / "checkpoints" / Path(best["checkpoint"]).name),
        "threshold": best["threshold"],
        "choice_f1_during_training": best["f1"],
        "iteration": best["iteration"],
        "training": {
            "minutes": round(summary["timing"]["run_seconds"] / 60, 1),
            "iterations": summary["iterations"],
            "iterations_per_second": summary["timing"]["iterations_per_second"],
            "device": summary["device"],
        },
        "parameters": summary["parameters"],
        "network": summary["network"],
        "validation_curve": [
            {
                "iteration": entry["iteration"],
                "f1": round(entry["f1"], 4),
                "iou": round(entry["iou"], 4),
                "best_threshold": entry["best_threshold"],
                "best_threshold_f1": round(entry["best_threshold_f1"], 4),
                "exclusion_zone_f1": round(entry["exclusion_zone"]["f1"], 4),
            }
            for entry in json.loads((run / "history.json").read_text())
        ],
    }


def _budget_spent(summary: dict, config) -> bool:
    """Whether a run's summary says it is done: all iterations, or the whole time budget."""
    if summary["iterations"] >= config.iterations:
        return True
    budget = config.time_budget_minutes
    return bool(budget) and summary["timing"].get("run_seconds", 0) >= budget * 60 - 120


def predict(checkpoint: str, out: str, tta: str, work: Path) -> float:
    """Probabilities of slices 125-164 (one region of the whole volume); returns voxels/s of the run. Passes are
    at most as deep as the region (a 3D network's default 128 would compute 3 times the slices it keeps)."""
    z, depth = PREDICTED
    network = NetworkConfig.model_validate(load_checkpoint(checkpoint)["network"])
    step = list(default_step(network))
    step[0] = min(step[0], depth // network.total_factor()[0] * network.total_factor()[0])
    cli("predict", "--checkpoint", checkpoint, "--raw", f"{CONTAINER}/volumes/raw_clahe", "--out", out,
        "--roi", z, 0, 0, depth, 768, 1024, "--device", "cpu", "--workers", WORKERS, "--tta", tta, "--step", *step,
        "--min-object-voxels", 0, "--min-hole-voxels", 0, "--overwrite", "--quiet", cwd=work)  # fmt: skip
    summary = json.loads((work / out / "probabilities/.incasem_run/summary.json").read_text())
    return summary["voxels_per_second"]


def evaluate(prediction: str, part: tuple[int, int], work: Path, thresholds: str | None = None) -> dict:
    """`incasem-like evaluate` of slices `part` of the predicted region, every voxel and ASEM's metric."""
    z, depth = part
    out = work / "evaluations" / f"{prediction.replace('/', '_')}_{z}.json"
    out.parent.mkdir(exist_ok=True)
    extra = ("--thresholds", thresholds) if thresholds else ()
    cli("evaluate", "--prediction", prediction, "--labels", f"{CONTAINER}/volumes/labels/mito",
        "--metric-mask", f"{CONTAINER}/volumes/metric_masks/mito", "--roi", z - PREDICTED[0], 0, 0, depth, 768, 1024,
        "--json", out, "--overwrite", "--quiet", *extra, cwd=work)  # fmt: skip
    return json.loads(out.read_text())


def scores(result: dict, threshold: float | None) -> dict:
    """The field's and ASEM's scores of an evaluation at `threshold` (None: a segmentation)."""

    def at(rows):
        return next(row for row in rows if row["threshold"] == threshold)

    row, zone = at(result["results"]), at(result["exclusion_zone"]["results"])
    return {
        "f1": round(row["f1"], 4),
        "iou": round(row["iou"], 4),
        "precision": round(row["precision"], 4),
        "recall": round(row["recall"], 4),
        "exclusion_zone_f1": round(zone["f1"], 4),
        "exclusion_zone_iou": round(zone["iou"], 4),
    }


def choose_clean_up(probabilities: str, threshold: float, work: Path) -> tuple[dict, list]:
    """The clean-up of the grid with the best F1 on the choice slices (ties: the smaller sizes)."""
    tried = []
    for objects, holes in CLEAN_UP_GRID:
        out = f"{probabilities.rsplit('/', 1)[0]}/clean_{objects}_{holes}"
        cli("threshold", probabilities, out, "--threshold", threshold, "--min-object-voxels", objects,
            "--min-hole-voxels", holes, "--workers", WORKERS, "--overwrite", "--quiet", cwd=work)  # fmt: skip
        f1 = scores(evaluate(out, CHOICE, work), None)["f1"]
        tried.append({"min_object_voxels": objects, "min_hole_voxels": holes, "choice_f1": f1, "dataset": out})
    best = max(tried, key=lambda t: (t["choice_f1"], -t["min_object_voxels"], -t["min_hole_voxels"]))
    return best, [{k: v for k, v in t.items() if k != "dataset"} for t in tried]


def run_row(row: str, work: Path) -> dict:
    recipe, *extras = row.split("+")
    tta = "mirror+transpose" if "tta" in extras else "none"
    started = time.perf_counter()
    if recipe == "bundled":
        checkpoint = str(bundled_model("mito"))
        state = load_checkpoint(checkpoint)
        trained = {
            "config": "the bundled model as shipped (see its provenance)",
            "checkpoint": checkpoint,
            "sha256": hashlib.sha256(Path(checkpoint).read_bytes()).hexdigest(),
            "threshold": state.get("threshold") or 0.5,
            "provenance": state.get("provenance"),
            "parameters": sum(t.numel() for t in state["model"].values() if t.is_floating_point()),
            "network": state["network"],
            "note": "its threshold and checkpoint were chosen on slices 125-164 (before this split), so its "
            "held-out figures are optimistic",
        }
    else:
        trained = train_run(recipe_config(recipe), work)
    out = f"{CONTAINER}/volumes/predictions/quality/{recipe}_tta_{tta.replace('+', '_')}"
    key = (trained["checkpoint"], tta)
    if key not in PREDICTED_ALREADY:  # rows of one model and augmentation share its prediction
        PREDICTED_ALREADY[key] = predict(trained["checkpoint"], out, tta, work)
    speed = PREDICTED_ALREADY[key]
    probabilities = f"{out}/probabilities"
    threshold = trained["threshold"]
    chosen = {"checkpoint_iteration": trained.get("iteration"), "tta": tta}
    if tta != "none" or "clean" in extras:  # the threshold of this prediction, chosen on the choice slices
        choice = evaluate(probabilities, CHOICE, work)
        threshold = choice["best"]["threshold"]
    chosen["threshold"] = threshold
    report_dataset, clean = probabilities, None
    if "clean" in extras:
        best, tried = choose_clean_up(probabilities, threshold, work)
        chosen["clean_up"] = {key: best[key] for key in ("min_object_voxels", "min_hole_voxels")}
        chosen["clean_up_grid"] = tried
        report_dataset, clean = best["dataset"], best
    choice_scores = scores(
        evaluate(report_dataset, CHOICE, work, None if clean else str(threshold)), None if clean else threshold
    )
    held_out = scores(
        evaluate(report_dataset, REPORT, work, None if clean else str(threshold)), None if clean else threshold
    )
    return {
        "row": row,
        **{key: trained[key] for key in ("config", "parameters", "network") if key in trained},
        "training": trained.get("training"),
        "validation_curve_slices_125_144": trained.get("validation_curve"),
        "bundled": {key: trained[key] for key in ("sha256", "provenance", "note") if key in trained} or None,
        "chosen_on_slices_125_144": chosen,
        "choice_slices_125_144": choice_scores,
        "held_out_slices_145_164": held_out,
        "prediction_voxels_per_second_2_workers": speed,
        "checkpoint": trained["checkpoint"],
        "benchmark_minutes": round((time.perf_counter() - started) / 60, 1),
        "incasem_like_source": source_digest(),
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
    }


def export(row: dict, out: Path) -> None:
    """The row's model as a bundled model: float16 weights, its choices as predict's defaults, its figures."""
    chosen = row["chosen_on_slices_125_144"]
    provenance = {
        "name": out.stem,
        "made_by": f"python benchmarks/quality.py --rows {row['row']} --export ... ({row['config']})",
        "trained_on": "Lucchi++ training volume (EPFL hippocampus CA1 FIB-SEM, 5 nm voxels), slices 0-124, raw_clahe",
        "chosen_on": "slices 125-144: checkpoint, threshold, test-time augmentation, clean-up (by the field's F1)",
        "held_out": "slices 145-164, touched once: the figures below",
        "held_out_slices_145_164": row["held_out_slices_145_164"],
        "choice_slices_125_144": row["choice_slices_125_144"],
        "training": row["training"],
        "iteration": chosen["checkpoint_iteration"],
    }
    clean_up = chosen.get("clean_up")
    exported = export_weights(row["checkpoint"], out, provenance, chosen["threshold"], chosen["tta"], clean_up)
    print(f"exported {exported}")


METRICS = (
    "f1 (= Dice), iou, precision, recall: every voxel of the slices counts (the field's metric); exclusion_zone_*: "
    "voxels in ASEM's metric exclusion zone do not count"
)


def run_rows(args: argparse.Namespace, run_row, describe, after_row=None) -> dict:
    """`args.rows`, each run by `run_row(row, work)` on the data `prepare` converts into `args.work`, into
    `args.out` (rows of earlier runs kept), rewritten after every row with `describe(result)` and the machine
    (then `after_row(result)`); prints each row's held-out figures."""
    args.work.mkdir(parents=True, exist_ok=True)
    prepare(args.data.resolve(), args.work)
    result = json.loads(args.out.read_text()) if args.out.exists() else {"rows": {}}
    for row in args.rows:
        print(f"{row} ...", flush=True)
        result["rows"][row] = run_row(row, args.work)
        result.update(
            {**describe(result), "machine": machine(("incasem-like", "torch", "gunpowder", "daisy", "zarr", "numpy"))}
        )
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
        if after_row:
            after_row(result)
        held = result["rows"][row]["held_out_slices_145_164"]
        print(
            f"  held out: F1 {held['f1']:.4f} IoU {held['iou']:.4f} (exclusion zone F1 {held['exclusion_zone_f1']:.4f})"
        )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared/data/lucchi_pp_train")
    parser.add_argument("--work", type=Path, required=True, help="holds lucchi.zarr, the runs and the predictions")
    parser.add_argument("--rows", nargs="+", required=True, help="RECIPE[+tta][+clean] ...")
    parser.add_argument("--out", type=Path, default=RESULT)
    parser.add_argument("--export", type=Path, help="write the last row's model here (a bundled model)")
    args = parser.parse_args()
    described = {
        "benchmark": "segmentation quality on Lucchi++ (benchmarks/quality.py)",
        "split": {"train": "slices 0-124", "choose": "slices 125-144", "report": "slices 145-164"},
        "metrics": METRICS,
    }
    result = run_rows(args, run_row, lambda _: described)
    if args.export:
        export(result["rows"][args.rows[-1]], args.export)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
