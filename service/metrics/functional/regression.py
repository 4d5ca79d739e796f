"""Mean absolute and mean squared error, optionally weighted, from float64 sums."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from rankboard.service.metrics.functional._validation import validate_batch

__all__ = ["error_sums", "mean_absolute_error", "mean_squared_error"]


def error_sums(
    preds: Tensor, target: Tensor, weights: Tensor | None, squared: bool
) -> tuple[Tensor, Tensor]:
    """``(sum of w * error, sum of w)`` in float64 (unchecked inputs)."""
    d = preds.to(torch.float64) - target.to(torch.float64)
    e = d * d if squared else d.abs()
    if weights is None:
        return e.sum(), torch.tensor(float(e.numel()), dtype=torch.float64, device=e.device)
    w = weights.to(torch.float64)
    return (e * w).sum(), w.sum()


def _mean(total: Tensor, weight: Tensor) -> Tensor:
    return torch.where(weight > 0, total / torch.where(weight > 0, weight, 1.0), math.nan)


def mean_absolute_error(preds: Tensor, target: Tensor, *, weights: Tensor | None = None) -> Tensor:
    """Weighted mean of ``|preds - target|``; NaN for no samples (or zero total weight).

    >>> mean_absolute_error(torch.tensor([1.0, 2.0]), torch.tensor([2.0, 4.0])).item()
    1.5
    """
    b = validate_batch(
        preds,
        target,
        label_kind="real",
        weights=weights,
        supports_weights=True,
        metric_name="mean_absolute_error",
    )
    return _mean(*error_sums(b.preds, b.target, b.weights, squared=False))


def mean_squared_error(preds: Tensor, target: Tensor, *, weights: Tensor | None = None) -> Tensor:
    """Weighted mean of ``(preds - target) ** 2``; NaN for no samples (or zero weight).

    >>> mean_squared_error(torch.tensor([1.0, 2.0]), torch.tensor([2.0, 4.0])).item()
    2.5
    """
    b = validate_batch(
        preds,
        target,
        label_kind="real",
        weights=weights,
        supports_weights=True,
        metric_name="mean_squared_error",
    )
    return _mean(*error_sums(b.preds, b.target, b.weights, squared=True))
