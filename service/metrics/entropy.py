"""Normalized entropy, streaming: three float64 sums."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from rankboard.service.metrics.base import RankMetric
from rankboard.service.metrics.functional._sums import logloss_sums
from rankboard.service.metrics.functional._validation import Batch
from rankboard.service.metrics.functional.entropy import ne_from_sums
from rankboard.service.metrics.functional.regression import _mean

__all__ = ["NormalizedEntropy"]


class LogLossSums(RankMetric):
    """Base of the metrics of weighted log-loss sums (:class:`NormalizedEntropy` and
    :class:`~rankboard.service.metrics.extra.LogLoss`): 0/1 labels, probabilities clamped
    to ``[eta, 1 - eta]``, lower is better; the states are registered by each class."""

    supports_weights = True
    label_kind = "binary"
    prob_preds = True
    higher_is_better = False

    sum_logloss: Tensor
    sum_weight: Tensor

    def __init__(self, eta: float = 1e-12, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if not 0 < eta < 0.5:
            raise ValueError(f"{type(self).__name__}: eta must be in (0, 0.5), got {eta}")
        self.eta = float(eta)

    def mean_logloss(self) -> Tensor:
        """Mean log loss, 0-d float64; NaN without (weight of) samples."""
        return _mean(self.sum_logloss, self.sum_weight)


class NormalizedEntropy(LogLossSums):
    """Mean log loss of the model over that of a constant predictor at the positive rate.

    ``preds`` are probabilities in [0, 1] (a logit is refused), clamped to
    ``[eta, 1 - eta]``; the observed (weighted) positive rate is clamped likewise, so a
    stream with a single class gives a finite, very large value (about log loss / eta):
    the value torchrec's and tzrec's NE report (see docs/metric-conventions.md). NaN only
    without samples or with zero total weight. Lower is better.

    >>> m = NormalizedEntropy()
    >>> m.update(torch.tensor([0.2, 0.6, 0.9]), torch.tensor([0, 1, 1]))
    >>> round(m.compute().item(), 4)
    0.4395

    ``include_logloss`` (torchrec's option): :meth:`extra_values` also gives the mean log
    loss (the NE's numerator) under ``"logloss"``.

    >>> m = NormalizedEntropy(include_logloss=True)
    >>> m.update(torch.tensor([0.5, 0.5]), torch.tensor([0, 1]))
    >>> round(m.extra_values()["logloss"].item(), 6)
    0.693147
    """

    # states (registered by add_state in __init__)
    sum_logloss: Tensor
    sum_positive: Tensor
    sum_weight: Tensor

    def __init__(self, eta: float = 1e-12, include_logloss: bool = False, **kwargs: Any) -> None:
        super().__init__(eta, **kwargs)
        self.include_logloss = bool(include_logloss)
        zero = torch.tensor(0.0, dtype=torch.float64)
        self.add_state("sum_logloss", zero.clone(), dist_reduce_fx="sum", persistent=True)
        self.add_state("sum_positive", zero.clone(), dist_reduce_fx="sum", persistent=True)
        self.add_state("sum_weight", zero.clone(), dist_reduce_fx="sum", persistent=True)

    def _update_batch(self, b: Batch) -> None:
        """Add a batch: ``preds`` (n,) probabilities, ``target`` (n,) in {0, 1}."""
        ce, pos, w = logloss_sums(b.preds, b.target, b.weights, self.eta)
        self.sum_logloss += ce
        self.sum_positive += pos
        self.sum_weight += w

    def compute(self) -> Tensor:
        """The normalized entropy, 0-d float64."""
        return ne_from_sums(self.sum_logloss, self.sum_positive, self.sum_weight, self.eta)

    def extra_values(self) -> dict[str, Tensor]:
        """Values reported beside NE: ``{"logloss": mean log loss}`` with
        ``include_logloss``, else empty (0-d float64, NaN without samples)."""
        return {"logloss": self.mean_logloss()} if self.include_logloss else {}
