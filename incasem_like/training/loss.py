"""The training losses: the method's class-balanced binary cross-entropy, and binary cross-entropy plus soft Dice.

Both count only the voxels whose weight is positive (inside the cell mask and outside the metric exclusion zone,
where those are given); `loss_weights` makes the weights each loss expects.
"""

import numpy as np
import torch

#: soft Dice's smoothing term (voxels): keeps the loss defined and smooth for batches without foreground
DICE_SMOOTHING = 1.0


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
    fraction = float(np.count_nonzero(foreground) / total)
    fraction = min(max(fraction, 1 / (1 + max_class_ratio)), max_class_ratio / (1 + max_class_ratio))
    weights = np.where(foreground, 0.5 / fraction, 0.5 / (1 - fraction)).astype(np.float32)
    weights[~counted] = 0
    return weights


def loss_weights(loss: str, labels: np.ndarray, counted: np.ndarray, max_class_ratio: float) -> np.ndarray:
    """float32 weights for `loss`: class-balanced for balanced_bce, 1 where counted (else 0) for bce_dice."""
    if loss == "balanced_bce":
        return balanced_weights(labels, counted, max_class_ratio)
    return counted.astype(np.float32)


def weighted_bce(logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Mean of weight x BCE over the voxels that count (weights > 0); 0 if none counts."""
    losses = torch.nn.functional.binary_cross_entropy_with_logits(logits.float(), labels.float(), reduction="none")
    counted = (weights > 0).sum().clamp(min=1)
    return (losses * weights).sum() / counted


def soft_dice_loss(logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """1 - soft Dice of the foreground probabilities over the batch's counted voxels (weights > 0)."""
    counted = (weights > 0).float()
    probabilities = torch.sigmoid(logits.float()) * counted
    truth = labels.float() * counted
    overlap = (probabilities * truth).sum()
    return 1 - (2 * overlap + DICE_SMOOTHING) / (probabilities.sum() + truth.sum() + DICE_SMOOTHING)


def training_loss(loss: str, logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """The configured loss of a batch: `balanced_bce` or `bce_dice` (BCE over the counted voxels + soft Dice)."""
    if loss == "balanced_bce":
        return weighted_bce(logits, labels, weights)
    return weighted_bce(logits, labels, (weights > 0).float()) + soft_dice_loss(logits, labels, weights)
