"""Pointwise losses on logits: BCE and softmax CE with label smoothing, L2, binary focal.

Every loss takes tzrec's ``reduction``: ``"mean"`` (the default), ``"sum"``, or
``"none"`` for the per-sample losses (tzrec builds its losses with ``"none"``
when the model has sample weights, then takes ``mean(loss * weight)``).

Example::

    >>> import torch
    >>> loss = BinaryCrossEntropyLoss(label_smoothing=0.2)
    >>> round(loss(torch.tensor([0.0, 0.0]), torch.tensor([1.0, 0.0])).item(), 4)
    0.6931
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "REDUCTIONS",
    "BinaryCrossEntropyLoss",
    "BinaryFocalLoss",
    "L2Loss",
    "SoftmaxCrossEntropyLoss",
]


def _check_same_shape(logits: torch.Tensor, labels: torch.Tensor, what: str) -> None:
    if logits.shape != labels.shape:
        raise ValueError(
            f"{what}: logits and labels must have the same shape, "
            f"got {tuple(logits.shape)} and {tuple(labels.shape)}"
        )


REDUCTIONS = ("none", "mean", "sum")
"""The ``reduction`` values of the pointwise losses."""


def _check_reduction(reduction: str, what: str, allowed: tuple[str, ...] = REDUCTIONS) -> None:
    if reduction not in allowed:
        raise ValueError(f"{what}.reduction must be one of {', '.join(allowed)}, got {reduction!r}")


def _reduce(loss: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    return loss


def _check_smoothing(label_smoothing: float) -> None:
    if not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1], got {label_smoothing}")


class _ReducedLoss(nn.Module):
    """A loss with a ``reduction`` (:data:`REDUCTIONS`), checked on creation."""

    def __init__(self, reduction: str = "mean") -> None:
        super().__init__()
        _check_reduction(reduction, type(self).__name__)
        self.reduction = reduction


class _SmoothedLoss(_ReducedLoss):
    """A loss with ``label_smoothing`` in [0, 1] and a ``reduction``, checked on creation."""

    def __init__(self, label_smoothing: float = 0.0, reduction: str = "mean") -> None:
        _check_smoothing(label_smoothing)
        super().__init__(reduction)
        self.label_smoothing = label_smoothing


class BinaryCrossEntropyLoss(_SmoothedLoss):
    """Mean binary cross-entropy on logits; targets ``y`` become ``y * (1 - s) + s / 2``.

    >>> import torch
    >>> round(BinaryCrossEntropyLoss()(torch.tensor([2.0]), torch.tensor([1])).item(), 4)
    0.1269
    """

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Loss of ``logits`` against 0/1 (or soft) ``labels`` of the same shape."""
        _check_same_shape(logits, labels, "BinaryCrossEntropyLoss")
        target = labels.to(logits.dtype)
        if self.label_smoothing:
            target = target * (1 - self.label_smoothing) + self.label_smoothing / 2
        return F.binary_cross_entropy_with_logits(logits, target, reduction=self.reduction)


class SoftmaxCrossEntropyLoss(_SmoothedLoss):
    """Mean softmax cross-entropy of ``(n, c)`` logits against ``(n,)`` class indices.

    >>> import torch
    >>> round(SoftmaxCrossEntropyLoss()(torch.zeros(1, 4), torch.tensor([3])).item(), 4)
    1.3863
    """

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Loss of ``(n, c)`` logits against ``(n,)`` integer labels."""
        if logits.dim() != 2 or labels.dim() != 1 or labels.shape[0] != logits.shape[0]:
            raise ValueError(
                "SoftmaxCrossEntropyLoss: expected logits (n, c) and labels (n,), got "
                f"{tuple(logits.shape)} and {tuple(labels.shape)}"
            )
        return F.cross_entropy(
            logits, labels.long(), label_smoothing=self.label_smoothing, reduction=self.reduction
        )


class L2Loss(_ReducedLoss):
    """Mean squared error between predictions and labels of the same shape.

    >>> import torch
    >>> L2Loss()(torch.tensor([1.0, 3.0]), torch.tensor([0.0, 1.0])).item()
    2.5
    """

    def forward(self, preds: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """``(preds - labels) ** 2``, reduced."""
        _check_same_shape(preds, labels, "L2Loss")
        return F.mse_loss(preds, labels.to(preds.dtype), reduction=self.reduction)


class BinaryFocalLoss(_ReducedLoss):
    """Focal loss on logits: BCE weighted by ``alpha y (1-p)^g + (1-alpha)(1-y) p^g``.

    The weight is detached (no gradient flows through it). ``reduction="none"``
    gives the per-sample losses, whose mean is the ``"mean"`` loss.

    >>> import torch
    >>> loss = BinaryFocalLoss(gamma=0.0, alpha=0.5)
    >>> round(loss(torch.tensor([0.0]), torch.tensor([1.0])).item(), 4)
    0.3466
    >>> BinaryFocalLoss(gamma=0.0, reduction="none")(torch.zeros(2), torch.ones(2)).shape
    torch.Size([2])
    """

    def __init__(self, gamma: float = 2.0, alpha: float = 0.5, reduction: str = "mean") -> None:
        super().__init__(reduction)
        if gamma < 0:
            raise ValueError(f"BinaryFocalLoss.gamma must be >= 0, got {gamma}")
        if not 0 < alpha < 1:
            raise ValueError(f"BinaryFocalLoss.alpha must be in (0, 1), got {alpha}")
        self.gamma = gamma
        self.alpha = alpha

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Loss of ``logits`` against 0/1 ``labels`` of the same shape."""
        _check_same_shape(logits, labels, "BinaryFocalLoss")
        y = labels.to(logits.dtype)
        with torch.no_grad():
            p = torch.sigmoid(logits)
            weight = self.alpha * y * (1 - p) ** self.gamma + (1 - self.alpha) * (1 - y) * (
                p**self.gamma
            )
        bce = F.binary_cross_entropy_with_logits(logits, y, reduction="none")
        return _reduce(weight * bce, self.reduction)
