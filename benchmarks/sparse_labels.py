"""Learning from little annotation on Lucchi++: held-out F1 versus the number of annotated training slices, and
semi-supervised training on the unannotated remainder (benchmarks/results/sparse_lucchi.json and its plot).

The split of benchmarks/quality.py: slices 0-124 train (here only the annotated ones among them count), slices
125-144 choose the checkpoint and threshold (the run's validation sweep), slices 145-164 only report. Every row is
the recipe `2d_d3` (configs/training/lucchi_recipes/2d_d3.yaml) with a fixed number of iterations (not a time
budget: rows stay comparable on a busy machine), its training entry annotated on `k` slices spread evenly over
0-124 (`annotated_slices`; unannotated voxels get no loss weight, samples without annotated voxels are redrawn):

    python benchmarks/sparse_labels.py --work /tmp/quality --rows 1 5 10 20 dense 5+unlabelled 20+interpolated

`K+interpolated` trains on labels interpolated from the K annotated slices (`incasem-like labels interpolate`,
random walker) with the unsure voxels left out (`annotated: ..._sure`). `K+unlabelled` adds the raw of slices
0-124 as unlabelled data for a reconstruction decoder (`semi_supervised`,
schedule `joint`, so the segmentation gets as many updates as without it). `../shared/data/vnc_sstem/stack2` does
not apply as a second unlabelled tissue: its voxels (4.6 x 4.6 x 50 nm) differ from Lucchi's (5 nm), and a model
is trained at one voxel size.
"""

import argparse
import datetime
import sys
import time
from pathlib import Path

import numpy as np
import yaml

sys.path.insert(0, str(Path(__file__).parent))
from convert import source_digest  # noqa: E402  (shared helpers)
from quality import (  # noqa: E402
    CHOICE,
    METRICS,
    REPORT,
    cli,
    evaluate,
    predict,
    recipe_config,
    run_rows,
    scores,
    train_run,
)

REPO = Path(__file__).resolve().parent.parent
RESULT = REPO / "benchmarks" / "results" / "sparse_lucchi.json"
PLOT = REPO / "benchmarks" / "results" / "sparse_lucchi.png"
RECIPE = "2d_d3"
ITERATIONS = 120
TRAINING_SLICES = 125


def annotated_slices(count: int) -> list[int]:
    """`count` slices spread evenly over the training slices (each in the middle of its share)."""
    return [int(s) for s in np.floor((np.arange(count) + 0.5) * TRAINING_SLICES / count)]


def row_config(row: str, work: Path) -> Path:
    """The recipe with the row's annotation (and unlabelled data), written into `work/configs/sparse/`."""
    count, *extras = row.split("+")
    config = yaml.safe_load(recipe_config(RECIPE).read_text())
    config["run_dir"] = f"runs/sparse/{row.replace('+', '_')}"
    config.update(iterations=ITERATIONS, time_budget_minutes=None, checkpoint_every=60, validate_every=60)
    if "interpolated" in extras:  # dense labels interpolated from the annotated slices; unsure voxels do not count
        labels = f"volumes/labels/mito_interpolated_{count}"
        cli("labels", "interpolate", "lucchi.zarr/volumes/labels/mito", f"lucchi.zarr/{labels}", "--raw",
            "lucchi.zarr/volumes/raw_clahe", "--annotated-slices", ",".join(map(str, annotated_slices(int(count)))),
            "--workers", 2, "--overwrite", "--quiet", cwd=work)  # fmt: skip
        config["training"][0].update(labels=labels, annotated=f"{labels}_sure")
    elif count != "dense":
        config["training"][0]["annotated_slices"] = annotated_slices(int(count))
    if "unlabelled" in extras:
        raw = {key: config["training"][0][key] for key in ("container", "raw", "roi")}
        config["semi_supervised"] = {"unlabelled": [raw], "schedule": "joint", "weight": 1.0}
    path = work / "configs" / "sparse" / f"{row.replace('+', '_')}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def run_row(row: str, work: Path) -> dict:
    started = time.perf_counter()
    config_path = row_config(row, work)
    trained = train_run(config_path, work)
    out = f"lucchi.zarr/volumes/predictions/sparse/{row.replace('+', '_')}"
    speed = predict(trained["checkpoint"], out, "none", work)
    threshold = trained["threshold"]
    probabilities = f"{out}/probabilities"
    config = yaml.safe_load(config_path.read_text())
    return {
        "row": row,
        "annotated_slices": config["training"][0].get("annotated_slices")
        or (annotated_slices(int(row.split("+")[0])) if "interpolated" in row else "all of 0-124"),
        "semi_supervised": config.get("semi_supervised"),
        "config": config,
        "training": trained["training"],
        "validation_curve_slices_125_144": trained["validation_curve"],
        "chosen_on_slices_125_144": {"checkpoint_iteration": trained["iteration"], "threshold": threshold},
        "choice_slices_125_144": scores(evaluate(probabilities, CHOICE, work, str(threshold)), threshold),
        "held_out_slices_145_164": scores(evaluate(probabilities, REPORT, work, str(threshold)), threshold),
        "prediction_voxels_per_second_2_workers": speed,
        "benchmark_minutes": round((time.perf_counter() - started) / 60, 1),
        "incasem_like_source": source_digest(),
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
    }


def plot(result: dict, out: Path) -> None:
    """Held-out F1 against annotated slices (log scale), with and without the unlabelled remainder."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(6, 4), dpi=120)
    kinds = (("", "annotated slices only", "o"), ("unlabelled", "+ unlabelled remainder", "s"),
             ("interpolated", "labels interpolated between them", "^"))  # fmt: skip
    for kind, label, marker in kinds:
        points = sorted(
            (TRAINING_SLICES if row.startswith("dense") else int(row.split("+")[0]), r["held_out_slices_145_164"]["f1"])
            for row, r in result["rows"].items()
            if (row.split("+") + [""])[1] == kind
        )
        if points:
            axes.plot(*zip(*points), marker=marker, label=label)
    axes.set_xscale("log")
    axes.set_xlim(0.8, 160)
    lowest = min(r["held_out_slices_145_164"]["f1"] for r in result["rows"].values())
    axes.set_ylim(min(0.5, lowest - 0.05), 1.0)
    axes.set_xlabel("annotated training slices (of 125; 125 = dense)")
    axes.set_ylabel("held-out F1, slices 145-164 (every voxel)")
    axes.set_title(f"Lucchi++ mitochondria, recipe {RECIPE}, {ITERATIONS} iterations")
    axes.grid(True, alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared/data/lucchi_pp_train")
    parser.add_argument("--work", type=Path, required=True, help="holds lucchi.zarr, the runs and the predictions")
    parser.add_argument("--rows", nargs="+", required=True, help="K[+unlabelled] or dense ...")
    parser.add_argument("--out", type=Path, default=RESULT)
    args = parser.parse_args()

    def describe(result: dict) -> dict:
        return {
            "benchmark": "F1 versus annotated slices on Lucchi++ (benchmarks/sparse_labels.py)",
            "command": "python benchmarks/sparse_labels.py --work WORK --rows " + " ".join(result["rows"]),
            "split": {"train": "slices 0-124 (annotated ones)", "choose": "slices 125-144", "report": "145-164"},
            "metrics": METRICS,
            "vnc_stack2_as_unlabelled": "not applicable: 4.6 x 4.6 x 50 nm voxels against Lucchi's 5 nm",
        }

    run_rows(args, run_row, describe, after_row=lambda result: plot(result, PLOT))
    print(f"wrote {args.out} and {PLOT}")


if __name__ == "__main__":
    main()
