"""Evaluation of a prediction against ground truth: precision, recall, F1, IoU and Dice, streamed blockwise.

Two metrics, each labelled: the field's (every voxel of the evaluated region counts; foreground F1 = Dice) and,
where a metric mask or cell mask is given, ASEM's (voxels in the metric exclusion zone, mask 0, and outside the
cell mask do not count).

The evaluated region (the prediction's ROI, or `--roi` inside it) is cut into blocks of whole prediction chunks,
read by a thread pool (zarr decompression releases the GIL) and reduced to two 256-bin histograms of the
prediction's uint8 values: over the counted label-background and the counted label-foreground voxels. They are
exact sufficient statistics: the confusion counts of a 0/1 segmentation (foreground = nonzero) and of a
probability map at any threshold t (foreground = q > t * 255, the rule of `incasem-like threshold`) follow from
sums over their bins, so a whole threshold sweep costs one pass and memory stays that of a few blocks.
"""

import json
import math
import os
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from itertools import product
from pathlib import Path

import numpy as np
from tqdm import tqdm

from incasem_like.core.errors import UserError
from incasem_like.core.files import write_atomically
from incasem_like.core.geometry import Coordinate, Roi, nm_text, roi_from_voxels, roi_to_voxels, to_nm
from incasem_like.ops.metrics import EXCLUSION_ZONE, overlap_scores, threshold_counts, value_histograms
from incasem_like.store.datasets import DatasetPath, Volume, dataset_meta, open_dataset

PROBABILITIES = "probabilities"
DEFAULT_THRESHOLDS = "0.05:0.95:0.05"
#: blocks are whole prediction chunks, grown to about this many voxels (128^3) to keep per-block overhead small
BLOCK_VOXELS = 2**21


def parse_thresholds(text: str) -> list[float]:
    """`START:STOP:STEP` (STOP included) or comma-separated values, each in [0, 1); sorted, without repeats.

    Values are rounded to 10 decimals, so 0.3:0.7:0.05 yields 0.35 exactly as typed (and segments like
    `incasem-like threshold --threshold 0.35`)."""
    syntax = (
        f"--thresholds {text!r}: write START:STOP:STEP (e.g. 0.3:0.7:0.05, STOP included) or values separated "
        "by commas (e.g. 0.3,0.5)"
    )
    try:
        if ":" in text:
            start, stop, step = (float(part) for part in text.split(":"))
            if step <= 0 or stop < start:
                raise UserError(f"{syntax}; STEP must be positive and STOP at least START")
            values = [start + i * step for i in range(int(math.floor((stop - start) / step + 1e-9)) + 1)]
        else:
            values = [float(part) for part in text.split(",")]
    except ValueError:
        raise UserError(syntax) from None
    thresholds = sorted({round(value, 10) for value in values})
    outside = [t for t in thresholds if not 0 <= t < 1]
    if outside:
        raise UserError(
            f"--thresholds {text!r}: {outside[0]} is outside [0, 1); voxels with probability above a threshold "
            "are foreground"
        )
    return thresholds


@dataclass(frozen=True)
class EvaluationInputs:
    """The opened, mutually checked datasets and the region (world units) to evaluate."""

    prediction_path: DatasetPath
    prediction: Volume
    probabilities: bool
    #: role ("labels", "metric mask", "cell mask") -> (path, volume), for those given
    volumes: dict[str, tuple[DatasetPath, Volume]]
    roi: Roi


def open_inputs(
    prediction: str,
    labels: str,
    metric_mask: str | None = None,
    cell_mask: str | None = None,
    roi_voxels: Sequence[int] | None = None,
    probabilities: bool = False,
) -> EvaluationInputs:
    """Open and check the datasets (raising `UserError` naming the dataset, the value and the fix)."""
    prediction_path = DatasetPath.parse(prediction)
    volume = open_dataset(prediction_path)
    if volume.dtype != np.uint8:
        raise UserError(
            f"{prediction_path}: dtype {volume.dtype}; evaluate needs a uint8 prediction (a 0/1 segmentation, or "
            "probabilities 0..255 = 0..1 as predict writes them); threshold or rescale it first"
        )
    region = _region(prediction_path, volume, roi_voxels)
    volumes = {}
    for role, path in (("labels", labels), ("metric mask", metric_mask), ("cell mask", cell_mask)):
        if path is not None:
            volumes[role] = (DatasetPath.parse(path), _open_matching(path, role, volume, region, roi_voxels))
    return EvaluationInputs(
        prediction_path,
        volume,
        probabilities or dataset_meta(prediction_path).get("kind") == PROBABILITIES,
        volumes,
        region,
    )


def _region(path: DatasetPath, prediction: Volume, roi_voxels: Sequence[int] | None) -> Roi:
    if roi_voxels is None:
        return prediction.roi
    roi = roi_from_voxels(roi_voxels[:3], roi_voxels[3:], prediction.voxel_size, origin=prediction.offset)
    if any(s <= 0 for s in roi_voxels[3:]) or not prediction.roi.contains(roi):
        raise UserError(
            f"--roi offset {tuple(roi_voxels[:3])} shape {tuple(roi_voxels[3:])} (voxels) lies outside {path} of "
            f"shape {prediction.shape}; choose a region inside the prediction (offset from its first voxel)"
        )
    return roi


def _open_matching(path: str, role: str, prediction: Volume, region: Roi, roi_voxels: Sequence[int] | None) -> Volume:
    """Open labels or a mask and check that it has the prediction's voxel size (offsets are on the voxel grid, so
    the two line up voxel for voxel) and covers `region`."""
    volume = open_dataset(path)
    name = f"{DatasetPath.parse(path)} ({role})"
    if not (np.issubdtype(volume.dtype, np.integer) or volume.dtype == np.bool_):
        raise UserError(
            f"{name}: dtype {volume.dtype}; labels and masks must be integers (foreground / counted = value > 0)"
        )
    if volume.voxel_size != prediction.voxel_size:
        raise UserError(
            f"{name}: voxel size {nm_text(volume.voxel_size)} differs from the prediction's "
            f"{nm_text(prediction.voxel_size)}; bring both to one resolution (incasem-like downsample) first"
        )
    if not volume.roi.contains(region):
        evaluated = "--roi" if roi_voxels is not None else "the prediction's ROI"
        raise UserError(
            f"{name}: covers {_describe(volume.roi, volume)}, not all of the evaluated region "
            f"{_describe(region, prediction)} ({evaluated}); evaluate where both exist with --roi OZ OY OX SZ SY SX "
            "(voxels from the prediction's first voxel)"
        )
    return volume


def _describe(roi: Roi, volume: Volume) -> str:
    return f"offset {nm_text(roi.offset)}, shape {tuple(roi.shape / volume.voxel_size)} voxels"


def evaluation_blocks(roi: Roi, prediction: Volume) -> list[Roi]:
    """`roi` cut on a grid of whole prediction chunks (anchored at its offset), each block ~BLOCK_VOXELS."""
    chunk = prediction.chunk_shape
    factor = max(1, int(math.cbrt(BLOCK_VOXELS / math.prod(chunk)) + 1e-9))
    block = chunk * factor * prediction.voxel_size
    first = (roi.begin - prediction.offset) / block
    last = (roi.end - prediction.offset - Coordinate(1, 1, 1)) / block
    return [
        Roi(prediction.offset + Coordinate(index) * block, block).intersect(roi)
        for index in product(*(range(a, b + 1) for a, b in zip(first, last)))
    ]


METRICS = {
    "all": "the field's metric: every voxel of the region counts",
    EXCLUSION_ZONE: "ASEM's metric: voxels in the metric exclusion zone (metric mask 0) or outside the cell mask "
    "do not count",
}


def count_block(inputs: EvaluationInputs, block: Roi) -> np.ndarray:
    """(kinds, 2, 256) `value_histograms` of one block, labels > 0 being the truth: over every voxel, and where a
    mask is given also over the voxels where every mask is > 0."""
    (_, labels), *masks = inputs.volumes.values()
    prediction, truth = inputs.prediction[block], labels[block] > 0
    histograms = [value_histograms(prediction, truth)]
    if masks:
        counted = None
        for _, mask in masks:
            inside = mask[block] > 0
            counted = inside if counted is None else np.logical_and(counted, inside, out=counted)
        histograms.append(value_histograms(prediction, truth, counted))
    return np.stack(histograms)


def evaluate(
    inputs: EvaluationInputs, thresholds: list[float] | None = None, threads: int = 0, progress: bool = False
) -> dict:
    """Scores of the prediction in `inputs.roi`: one row for a segmentation, one per threshold for a probability
    map (default `DEFAULT_THRESHOLDS`), and the best row by F1 (the lowest threshold among equals); at the top
    level over every voxel, and with masks also under EXCLUSION_ZONE over the voxels they count."""
    if thresholds is not None and not inputs.probabilities:
        raise UserError(
            f"--thresholds: {inputs.prediction_path} is a segmentation (recorded kind "
            f"{dataset_meta(inputs.prediction_path).get('kind')!r}); drop --thresholds, or pass --probabilities "
            "if it holds probabilities (0..255 = 0..1)"
        )
    threads = threads or os.cpu_count() or 1
    if threads < 1:
        raise UserError(f"--threads {threads}: need at least one thread")
    start = time.perf_counter()
    blocks = evaluation_blocks(inputs.roi, inputs.prediction)
    masked = len(inputs.volumes) > 1
    histograms = np.zeros((1 + masked, 2, 256), np.int64)
    with ThreadPoolExecutor(threads) as pool:
        counts = pool.map(partial(count_block, inputs), blocks)
        for block_histograms in tqdm(counts, total=len(blocks), unit="block", disable=not progress, leave=False):
            histograms += block_histograms
    seconds = time.perf_counter() - start

    if masked and histograms[1].sum() == 0:
        raise UserError(
            f"no voxel of the evaluated region ({_describe(inputs.roi, inputs.prediction)}) counts: the metric "
            "mask and cell mask are 0 everywhere in it; check --metric-mask, --mask and --roi"
        )
    if not inputs.probabilities:
        values = np.flatnonzero(histograms[0].sum(axis=0))
        if values.max() > 1:
            raise UserError(
                f"{inputs.prediction_path}: holds values up to {values.max()}, so it is no 0/1 segmentation; "
                "pass --probabilities if it is a probability map (0..255 = 0..1)"
            )
    row_thresholds: list[float | None] = (
        list(thresholds or parse_thresholds(DEFAULT_THRESHOLDS)) if inputs.probabilities else [None]
    )
    scored = [_scored(kind, counts, row_thresholds) for kind, counts in zip(METRICS, histograms)]
    voxel_size = inputs.prediction.voxel_size
    offset, shape = roi_to_voxels(inputs.roi, voxel_size, inputs.prediction.offset)
    voxels = math.prod(shape)
    return {
        "prediction": str(inputs.prediction_path),
        "kind": PROBABILITIES if inputs.probabilities else "segmentation",
        **{role.replace(" ", "_"): str(path) for role, (path, _) in inputs.volumes.items()},
        "roi": {
            "offset_nm": list(to_nm(inputs.roi.offset)),
            "shape_nm": list(to_nm(inputs.roi.shape)),
            "offset_voxels": list(offset),
            "shape_voxels": list(shape),
        },
        "voxel_size_nm": list(to_nm(voxel_size)),
        "voxels": voxels,
        **scored[0],
        **({EXCLUSION_ZONE: scored[1]} if masked else {}),
        "seconds": round(seconds, 3),
        "voxels_per_second": round(voxels / seconds) if seconds > 0 else 0,
    }


def _scored(kind: str, histograms: np.ndarray, thresholds: list[float | None]) -> dict:
    """One metric's rows (one per threshold), best row and the histograms they come from."""
    rows = [_row(t, histograms) for t in thresholds]
    return {
        "metric": METRICS[kind],
        "counted_voxels": int(histograms.sum()),
        "label_foreground_voxels": int(histograms[1].sum()),
        "results": rows,
        "best": max(rows, key=lambda row: row["f1"]),
        "histograms": {"label_background": histograms[0].tolist(), "label_foreground": histograms[1].tolist()},
    }


def _row(threshold: float | None, histograms: np.ndarray) -> dict:
    """Counts and scores at `threshold`; a segmentation (None) is foreground where nonzero, i.e. q > 0."""
    counts = threshold_counts(histograms, threshold or 0.0)
    return {"threshold": threshold, **counts, **overlap_scores(counts)}


def format_report(result: dict) -> str:
    """What was evaluated, then per metric a table with one row per threshold (the best by F1 marked)."""
    voxels, roi = result["voxels"], result["roi"]
    lines = [
        f"{result['prediction']} ({result['kind']}) vs {result['labels']}",
        f"  region: offset {tuple(roi['offset_voxels'])} shape {tuple(roi['shape_voxels'])} voxels of the prediction,"
        f" {voxels:,} voxels; {result['seconds']:.1f} s, {result['voxels_per_second'] / 1e6:.0f} M voxels/s",
    ]
    for scored in (result, result.get(EXCLUSION_ZONE)):
        if scored is None:
            continue
        counted, foreground = scored["counted_voxels"], scored["label_foreground_voxels"]
        lines += [
            "",
            f"{scored['metric'][0].upper()}{scored['metric'][1:]}: {counted:,} voxels counted "
            f"({counted / voxels:.1%}), label foreground {foreground:,} ({foreground / counted:.1%} of counted)",
            f"{'threshold':>9} {'precision':>9} {'recall':>7} {'F1':>7} {'IoU':>7} {'Dice':>7} "
            f"{'TP':>14} {'FP':>14} {'FN':>14}",
        ]
        if foreground == 0:
            lines.insert(
                -1,
                "  note: the labels hold no foreground here, so recall and F1 are 1 only where nothing is predicted "
                "and mean nothing about detection; evaluate a region with the organelle",
            )
        for row in scored["results"]:
            threshold = "-" if row["threshold"] is None else f"{row['threshold']:g}"
            best = "  <- best F1" if row is scored["best"] and len(scored["results"]) > 1 else ""
            lines.append(
                f"{threshold:>9} {row['precision']:>9.4f} {row['recall']:>7.4f} {row['f1']:>7.4f} "
                f"{row['iou']:>7.4f} {row['dice']:>7.4f} {row['true_positives']:>14,} "
                f"{row['false_positives']:>14,} {row['false_negatives']:>14,}{best}"
            )
    return "\n".join(lines)


def check_json_output(path: Path, overwrite: bool) -> None:
    if path.exists() and not overwrite:
        raise UserError(f"{path} already exists; pass --overwrite to replace it")
    if path.is_dir():
        raise UserError(f"--json {path} is a directory; name a file, e.g. {path / 'evaluation.json'}")


def write_json(path: Path, result: dict) -> None:
    """Write `result` to `path` atomically (`write_atomically`)."""
    try:
        write_atomically(path, json.dumps(result, indent=2) + "\n")
    except OSError as error:
        raise UserError(
            f"--json {path}: cannot write it ({error.strerror or error}: {error.filename}); choose a writable place"
        ) from None
