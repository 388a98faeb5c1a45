"""Voxel-wise detection scores of a segmentation against ground truth, ignoring voxels that do not count.

Counts are Python ints; predictions uint8 (0/1, or probabilities 0..255), truth bool; histograms int64.

>>> counts = {"true_positives": 8, "false_positives": 2, "false_negatives": 6}
>>> {key: round(value, 3) for key, value in scores(counts).items()}
{'precision': 0.8, 'recall': 0.571, 'f1': 0.667}
"""

import numpy as np

#: where results keep ASEM's metric beside the field's (voxels in the metric exclusion zone or outside the cell mask
#: do not count)
EXCLUSION_ZONE = "exclusion_zone"


def scores(counts: dict[str, int]) -> dict[str, float]:
    """precision = TP/(TP+FP), recall = TP/(TP+FN), F1 = 2PR/(P+R); an empty denominator scores 1 when there is
    nothing to find and nothing was found, else 0."""
    tp, fp, fn = counts["true_positives"], counts["false_positives"], counts["false_negatives"]
    precision = tp / (tp + fp) if tp + fp else float(fn == 0)
    recall = tp / (tp + fn) if tp + fn else float(fp == 0)
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1}


def overlap_scores(counts: dict[str, int]) -> dict[str, float]:
    """`scores` plus IoU (Jaccard) = TP/(TP+FP+FN) and Dice = 2TP/(2TP+FP+FN), which equals F1 voxel-wise; both
    score 1 when there is nothing to find and nothing was found."""
    tp, fp, fn = counts["true_positives"], counts["false_positives"], counts["false_negatives"]
    return {
        **scores(counts),
        "iou": tp / (tp + fp + fn) if tp + fp + fn else 1.0,
        "dice": 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 1.0,
    }


#: values of a uint8 prediction, the bins of `value_histograms`
UINT8_VALUES = np.arange(256)


def value_histograms(predicted: np.ndarray, truth: np.ndarray, counted: np.ndarray | None = None) -> np.ndarray:
    """(2, 256) voxel counts of each uint8 prediction value among the counted truth-background (row 0) and
    truth-foreground (row 1) voxels (truth foreground = nonzero). Summed over blocks, they give the confusion counts
    at every threshold (`threshold_counts`)."""
    # one bincount of (not counted, truth, value) packed in 10 bits: bit operations on uint16, no boolean indexing
    code = truth.astype(bool, copy=False).view(np.uint8).astype(np.uint16)
    if counted is not None:
        code |= np.logical_not(counted).view(np.uint8) << 1
    code <<= 8
    code |= predicted
    return np.bincount(code.ravel(), minlength=1024)[:512].reshape(2, 256)


def threshold_counts(histograms: np.ndarray, threshold: float) -> dict[str, int]:
    """Confusion counts of the segmentation `q > threshold * 255` (the rule of `incasem_like.stages.threshold.segment`)
    from `value_histograms` of the uint8 prediction q."""
    background, foreground = histograms
    predicted = UINT8_VALUES > threshold * 255
    return {
        "true_positives": int(foreground[predicted].sum()),
        "false_positives": int(background[predicted].sum()),
        "false_negatives": int(foreground[~predicted].sum()),
    }
