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


def instance_matches(prediction: np.ndarray, truth: np.ndarray, threshold: float = 0.5) -> dict[str, int]:
    """Object-level counts of two id volumes (any unsigned integer dtype, 0 = background): a predicted object and
    a true object match when their IoU exceeds `threshold` (>= 0.5, so each object matches at most one);
    true positives = matches, false positives = unmatched predictions, false negatives = unmatched truths, for
    `scores`.

    >>> truth = np.array([1, 1, 1, 1, 0, 2, 2, 0])
    >>> instance_matches(np.array([5, 5, 5, 0, 0, 0, 7, 7]), truth)
    {'true_positives': 1, 'false_positives': 1, 'false_negatives': 1}
    """
    if threshold < 0.5:
        raise ValueError("a matching threshold below 0.5 can match an object twice")
    predicted_ids, predicted = np.unique(prediction, return_inverse=True)
    true_ids, true = np.unique(truth, return_inverse=True)
    codes, overlap = np.unique(predicted.ravel() * len(true_ids) + true.ravel(), return_counts=True)
    pairs = np.divmod(codes, len(true_ids))
    sizes_p, sizes_t = np.bincount(predicted.ravel()), np.bincount(true.ravel())
    both = (predicted_ids[pairs[0]] > 0) & (true_ids[pairs[1]] > 0)
    p, t, overlap = pairs[0][both], pairs[1][both], overlap[both]
    iou = overlap / (sizes_p[p] + sizes_t[t] - overlap)
    matches = int(np.count_nonzero(iou > threshold))
    objects_p, objects_t = int(np.count_nonzero(predicted_ids)), int(np.count_nonzero(true_ids))
    return {"true_positives": matches, "false_positives": objects_p - matches, "false_negatives": objects_t - matches}
