"""Mean absolute and mean squared error (optionally weighted), streaming float64 sums."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from rankboard.service.metrics.base import RankMetric
from rankboard.service.metrics.functional._sums import error_sums
from rankboard.service.metrics.functional._validation import Batch
from rankboard.service.metrics.functional.regression import _mean

__all__ = ["MeanAbsoluteError", "MeanSquaredError"]


class _MeanError(RankMetric):
    supports_weights = True
    label_kind = "real"
    higher_is_better = False
    squared = False

    # states (registered by add_state in __init__)
    sum_error: Tensor
    sum_weight: Tensor

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        zero = torch.tensor(0.0, dtype=torch.float64)
        self.add_state("sum_error", zero.clone(), dist_reduce_fx="sum", persistent=True)
        self.add_state("sum_weight", zero.clone(), dist_reduce_fx="sum", persistent=True)

    def _update_batch(self, b: Batch) -> None:
        """Add a batch: ``preds`` (n,), ``target`` (n,), optional ``weights`` (n,) >= 0."""
        e, w = error_sums(b.preds, b.target, b.weights, squared=self.squared)
        self.sum_error += e
        self.sum_weight += w

    def compute(self) -> Tensor:
        """The weighted mean error, 0-d float64; NaN with no samples or zero total weight."""
        return _mean(self.sum_error, self.sum_weight)


class MeanAbsoluteError(_MeanError):
    """Weighted mean of ``|preds - target|``.

    >>> m = MeanAbsoluteError()
    >>> w = torch.tensor([1.0, 3.0])
    >>> m.update(torch.tensor([1.0, 2.0]), torch.tensor([2.0, 4.0]), weights=w)
    >>> m.compute().item()
    1.75
    """


class MeanSquaredError(_MeanError):
    """Weighted mean of ``(preds - target) ** 2``.

    >>> m = MeanSquaredError()
    >>> m.update(torch.tensor([1.0, 2.0]), torch.tensor([2.0, 4.0]))
    >>> m.compute().item()
    2.5
    """

    squared = True
