"""Class-balanced binary cross-entropy: inverse class frequency weights, clipped, zero where nothing counts."""

import numpy as np
import torch


def balanced_weights(labels: np.ndarray, counted: np.ndarray, max_class_ratio: float = 100.0) -> np.ndarray:
    """float32 per-voxel weights: each class gets half the total weight of the counted voxels.

    The foreground fraction f among counted voxels is clipped to [1/(1+r), r/(1+r)] (r = `max_class_ratio`), so
    one class never weighs more than r times the other per voxel. Voxels where `counted` is False weigh 0.
    """
    counted = counted.astype(bool)
    total = int(np.count_nonzero(counted))
    if total == 0:
        return np.zeros(labels.shape, dtype=np.float32)
    foreground = (labels > 0) & counted
    fraction = np.count_nonzero(foreground) / total
    fraction = min(max(fraction, 1 / (1 + max_class_ratio)), max_class_ratio / (1 + max_class_ratio))
    weights = np.where(foreground, 0.5 / fraction, 0.5 / (1 - fraction)).astype(np.float32)
    weights[~counted] = 0
    return weights


def weighted_bce(logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Mean of weight x BCE over the voxels that count (weights > 0); 0 if none counts."""
    losses = torch.nn.functional.binary_cross_entropy_with_logits(logits.float(), labels.float(), reduction="none")
    counted = (weights > 0).sum().clamp(min=1)
    return (losses * weights).sum() / counted
