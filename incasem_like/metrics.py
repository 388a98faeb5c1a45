"""Voxel-wise detection scores of a binary segmentation against ground truth, ignoring voxels that do not count."""

import numpy as np


def confusion(predicted: np.ndarray, truth: np.ndarray, counted: np.ndarray | None = None) -> dict[str, int]:
    """True/false positives and false negatives among counted voxels (foreground = nonzero)."""
    predicted, truth = predicted.astype(bool), truth.astype(bool)
    if counted is not None:
        counted = counted.astype(bool)
        predicted, truth = predicted & counted, truth & counted
    return {
        "true_positives": int(np.count_nonzero(predicted & truth)),
        "false_positives": int(np.count_nonzero(predicted & ~truth)),
        "false_negatives": int(np.count_nonzero(~predicted & truth)),
    }


def scores(counts: dict[str, int]) -> dict[str, float]:
    """precision = TP/(TP+FP), recall = TP/(TP+FN), F1 = 2PR/(P+R); an empty denominator scores 1 when there is
    nothing to find and nothing was found, else 0."""
    tp, fp, fn = counts["true_positives"], counts["false_positives"], counts["false_negatives"]
    precision = tp / (tp + fp) if tp + fp else float(fn == 0)
    recall = tp / (tp + fn) if tp + fn else float(fp == 0)
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1}


def add_counts(*counts: dict[str, int]) -> dict[str, int]:
    return {key: sum(c[key] for c in counts) for key in ("true_positives", "false_positives", "false_negatives")}
