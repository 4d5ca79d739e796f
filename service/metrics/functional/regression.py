"""Mean absolute and mean squared error, optionally weighted, from float64 sums."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from rankboard.service.metrics.functional._sums import Number, error_sums
from rankboard.service.metrics.functional._validation import validate_batch

__all__ = ["error_sums", "mean_absolute_error", "mean_squared_error"]


def _mean(total: Number, weight: Number) -> Tensor:
    total = torch.as_tensor(total, dtype=torch.float64)
    weight = torch.as_tensor(weight, dtype=torch.float64)
    return torch.where(weight > 0, total / torch.where(weight > 0, weight, 1.0), math.nan)


def _mean_error(preds: Tensor, target: Tensor, weights: Tensor | None, squared: bool) -> Tensor:
    b = validate_batch(
        preds,
        target,
        label_kind="real",
        weights=weights,
        metric_name="mean_squared_error" if squared else "mean_absolute_error",
    )
    return _mean(*error_sums(b.preds, b.target, b.weights, squared=squared))


def mean_absolute_error(preds: Tensor, target: Tensor, *, weights: Tensor | None = None) -> Tensor:
    """Weighted mean of ``|preds - target|``; NaN for no samples (or zero total weight).

    >>> mean_absolute_error(torch.tensor([1.0, 2.0]), torch.tensor([2.0, 4.0])).item()
    1.5
    """
    return _mean_error(preds, target, weights, squared=False)


def mean_squared_error(preds: Tensor, target: Tensor, *, weights: Tensor | None = None) -> Tensor:
    """Weighted mean of ``(preds - target) ** 2``; NaN for no samples (or zero weight).

    >>> mean_squared_error(torch.tensor([1.0, 2.0]), torch.tensor([2.0, 4.0])).item()
    2.5
    """
    return _mean_error(preds, target, weights, squared=True)
