"""Segmentation quality on anisotropic ssTEM: the Drosophila VNC stack (z y x = 50 x 4.6 x 4.6 nm voxels), a
membrane and a mitochondria model (benchmarks/results/quality_vnc.json).

Stack 1 of ../shared/data/vnc_sstem (20 sections of 1024^2): sections 0-12 train, sections 13-15 take every choice
(checkpoint and threshold, from the training run's validation sweep), sections 16-19 only report, once. Each model
is configs/training/vnc_recipes/<organelle>.yaml (a slice-wise 2D U-Net on the raw sections), trained with the
time budget it sets on this machine (an unfinished run is resumed). Through the real commands: convert (non-integer
voxel sizes), train, predict sections 13-19 as one region (`--roi`, 2 workers), evaluate sections 16-19 with the
field's metric (every voxel: F1 = Dice, IoU, precision, recall) and ASEM's (outside an exclusion zone around each
label boundary within the sections, none across them: `labels metric-mask --dilation 0 R R --erosion 0 R R`, R = 2
voxels for mitochondria, 1 for the thin membranes).
Stack 2 (unlabelled) is predicted whole and shown in neuroglancer (headless Chromium, as the viewer tests):
benchmarks/results/vnc_stack2_<organelle>.png.

    python benchmarks/vnc.py --work /tmp/vnc            # both organelles
    python benchmarks/vnc.py --work /tmp/vnc --organelles mito
"""

import argparse
import datetime
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent.parent))  # the viewer tests' browser helpers
from convert import machine, source_digest  # noqa: E402  (shared helpers)
from quality import cli, scores, train_run  # noqa: E402

from tests.review.test_view import shown_in_chromium  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
RESULT = REPO / "benchmarks" / "results" / "quality_vnc.json"
DATA = REPO.parent / "shared" / "data" / "vnc_sstem"
CONTAINER, UNLABELLED = "vnc.zarr", "vnc2.zarr"
VOXEL_SIZE = (50, 4.6, 4.6)
SECTION = (1024, 1024)
PREDICTED = (13, 7)  # first section, sections: the choice and the report sections in one prediction
CHOICE, REPORT = (13, 3), (16, 4)
#: the exclusion zone's radius within sections (voxels)
ZONE = {"mito": 2, "membranes": 1}
WORKERS = 2
ORGANELLES = {"mito": "mitochondria", "membranes": "membranes"}


def prepare(work: Path) -> None:
    """Raw sections, the two label sets and their metric masks, and the unlabelled stack 2."""
    quiet = ("--workers", WORKERS, "--quiet")
    size = ("--voxel-size", *VOXEL_SIZE)
    if not (work / CONTAINER / "volumes/raw").exists():
        cli("convert", DATA / "stack1/raw", f"{CONTAINER}/volumes/raw", *size, *quiet, cwd=work)
    if not (work / UNLABELLED / "volumes/raw").exists():
        cli("convert", DATA / "stack2/raw", f"{UNLABELLED}/volumes/raw", *size, *quiet, cwd=work)
    for organelle, folder in ORGANELLES.items():
        labels, zone = f"{CONTAINER}/volumes/labels/{organelle}", f"{CONTAINER}/volumes/metric_masks/{organelle}"
        if not (work / labels).exists():
            cli("convert", DATA / "stack1" / folder, labels, *size, "--labels", *quiet, cwd=work)
        if not (work / zone).exists():
            radius = ZONE[organelle]
            cli("labels", "metric-mask", labels, zone, "--dilation", 0, radius, radius, "--erosion", 0, radius, radius,
                *quiet, cwd=work)  # fmt: skip


def evaluate(organelle: str, prediction: str, part: tuple[int, int], threshold: float, work: Path) -> dict:
    z, depth = part
    out = work / "evaluations" / f"{organelle}_{z}.json"
    out.parent.mkdir(exist_ok=True)
    cli("evaluate", "--prediction", prediction, "--labels", f"{CONTAINER}/volumes/labels/{organelle}",
        "--metric-mask", f"{CONTAINER}/volumes/metric_masks/{organelle}",
        "--roi", z - PREDICTED[0], 0, 0, depth, *SECTION, "--thresholds", threshold,
        "--json", out, "--overwrite", "--quiet", cwd=work)  # fmt: skip
    return scores(json.loads(out.read_text()), threshold)


def screenshot(organelle: str, work: Path) -> Path:
    """Stack 2 with its predicted segmentation, as `incasem-like view` shows it in Chromium."""
    segmentation = f"volumes/predictions/vnc/{organelle}/segmentation"
    out = RESULT.parent / f"vnc_stack2_{organelle}.png"
    drawn, picture = shown_in_chromium(work / UNLABELLED, "volumes/raw", segmentation, layers=2, timeout=120)
    if "error" in drawn:
        raise RuntimeError(f"neuroglancer: {drawn['error']}")
    out.write_bytes(picture)
    return out


def run_organelle(organelle: str, work: Path) -> dict:
    started = time.perf_counter()
    trained = train_run(REPO / "configs" / "training" / "vnc_recipes" / f"{organelle}.yaml", work)
    out = f"{CONTAINER}/volumes/predictions/vnc/{organelle}"
    z, depth = PREDICTED
    cli("predict", "--checkpoint", trained["checkpoint"], "--raw", f"{CONTAINER}/volumes/raw", "--out", out,
        "--roi", z, 0, 0, depth, *SECTION, "--device", "cpu", "--workers", WORKERS, "--threshold", trained["threshold"],
        "--overwrite", "--quiet", cwd=work)  # fmt: skip
    speed = json.loads((work / out / "probabilities/.incasem_run/summary.json").read_text())["voxels_per_second"]
    probabilities, threshold = f"{out}/probabilities", trained["threshold"]
    cli("predict", "--checkpoint", trained["checkpoint"], "--raw", f"{UNLABELLED}/volumes/raw",
        "--out", f"{UNLABELLED}/volumes/predictions/vnc/{organelle}", "--device", "cpu", "--workers", WORKERS,
        "--threshold", threshold, "--overwrite", "--quiet", cwd=work)  # fmt: skip
    picture = screenshot(organelle, work)
    return {
        "organelle": organelle,
        **{key: trained[key] for key in ("config", "parameters", "network", "training")},
        "validation_curve_sections_13_15": trained["validation_curve"],
        "chosen_on_sections_13_15": {"checkpoint_iteration": trained["iteration"], "threshold": threshold},
        "choice_sections_13_15": evaluate(organelle, probabilities, CHOICE, threshold, work),
        "held_out_sections_16_19": evaluate(organelle, probabilities, REPORT, threshold, work),
        "exclusion_zone": f"{ZONE[organelle]} voxel(s) ({ZONE[organelle] * 4.6:g} nm) in y and x on each side of a "
        "label boundary, none across sections",
        "prediction_voxels_per_second_2_workers": speed,
        "stack2_screenshot": str(picture.relative_to(REPO)),
        "checkpoint": trained["checkpoint"],
        "benchmark_minutes": round((time.perf_counter() - started) / 60, 1),
        "incasem_like_source": source_digest(),
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, required=True, help="working directory (data, runs, predictions)")
    parser.add_argument("--organelles", nargs="+", choices=list(ORGANELLES), default=list(ORGANELLES))
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    prepare(args.work)
    result = json.loads(RESULT.read_text()) if RESULT.exists() else {"rows": {}}
    result.update(
        {
            "data": "Drosophila larva VNC ssTEM stack 1 (Gerhard et al., figshare 10.6084/m9.figshare.856713), "
            "20 sections of 1024 x 1024, voxels z y x = 50 x 4.6 x 4.6 nm",
            "split": "sections 0-12 train, 13-15 choose (checkpoint, threshold), 16-19 report",
            "machine": machine(),
        }
    )
    for organelle in args.organelles:
        result["rows"][organelle] = run_organelle(organelle, args.work)
        RESULT.write_text(json.dumps(result, indent=2) + "\n")
        held_out = result["rows"][organelle]["held_out_sections_16_19"]
        ez = held_out["exclusion_zone_f1"]
        print(f"{organelle}: held-out F1 {held_out['f1']}, IoU {held_out['iou']}, exclusion-zone F1 {ez}")


if __name__ == "__main__":
    main()
