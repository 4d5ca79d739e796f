"""tzrec's semantic-ID (SID) model metrics: RelativeL1 and UniqueRatio.

Definitions follow tzrec's ``tzrec/metrics/relative_l1.py`` and ``unique_ratio.py``
(written here from their documented definitions). Both take real-valued predictions of
shape ``(n,)`` or ``(n, D)`` (an embedding, or a row of SID codes per sample).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import Tensor

from rankboard.service.metrics.base import RankMetric
from rankboard.service.metrics.functional._validation import Batch

__all__ = ["RelativeL1", "UniqueRatio"]


def _real_2d(x: Any, name: str, who: str) -> Tensor:
    t = x if isinstance(x, Tensor) else torch.as_tensor(x)
    t = t.detach()
    if t.dim() not in (1, 2) or t.is_complex() or t.dtype == torch.bool:
        raise ValueError(f"{who}: {name} must be real numbers of shape (n,) or (n, D)")
    if t.numel() and not bool(torch.isfinite(t.to(torch.float64)).all()):
        raise ValueError(f"{who}: {name} contain NaN or infinite values")
    return t


def _checked_preds(
    metric: RankMetric, preds: Any, weights: Any, grouping_key: Any
) -> tuple[str, Tensor]:
    """The metric's name and its checked ``preds``, after refusing weights and grouping
    keys (neither is taken)."""
    who = type(metric).__name__
    if weights is not None:
        raise ValueError(f"{who} does not support per-sample weights")
    if grouping_key is not None:
        raise ValueError(f"{who} does not take a grouping key")
    return who, _real_2d(preds, "preds", who)


def _add_sum_and_count(metric: RankMetric, total: str) -> None:
    """Register a float64 sum state ``total`` and an integer ``count`` state."""
    zero = torch.tensor(0.0, dtype=torch.float64)
    metric.add_state(total, zero, dist_reduce_fx="sum", persistent=True)
    metric.add_state("count", torch.tensor(0), dist_reduce_fx="sum", persistent=True)


class RelativeL1(RankMetric):
    """Mean symmetric relative-L1 error ``|t - p| / (max(|t|, |p|) + epsilon)``.

    tzrec's reconstruction metric for SID models: 0 is exact, towards 1 unrelated. The
    mean is over all elements seen (element-weighted across batches, not a mean of
    batch means). ``preds`` and ``target`` have one shape, ``(n,)`` or ``(n, D)``. NaN
    before any element.

    >>> m = RelativeL1()
    >>> m.update(torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 2.0]]))
    >>> round(m.compute().item(), 6)  # (1 / (1 + 1e-4) + 2 / (2 + 1e-4)) / 2
    0.999925
    """

    label_kind = "real"
    higher_is_better = False

    # states (registered by add_state in __init__)
    sum_rel: Tensor
    count: Tensor

    def __init__(self, epsilon: float = 1e-4, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if not (math.isfinite(epsilon) and epsilon >= 0):
            raise ValueError(f"RelativeL1: epsilon must be finite and >= 0, got {epsilon}")
        self.epsilon = float(epsilon)
        _add_sum_and_count(self, "sum_rel")

    def _validate(self, preds: Any, target: Any, weights: Any, grouping_key: Any) -> Batch:
        who, p = _checked_preds(self, preds, weights, grouping_key)
        t = _real_2d(target, "target", who)
        if p.shape != t.shape:
            raise ValueError(
                f"{who}: preds {tuple(p.shape)} and target {tuple(t.shape)} differ in shape"
            )
        return Batch(p.to(torch.float32), t.to(torch.float32), None, None)

    def _update_batch(self, b: Batch) -> None:
        """Add a batch of reconstructions ``preds`` and inputs ``target`` (same shape)."""
        p, t = b.preds.to(torch.float64), b.target.to(torch.float64)
        rel = (t - p).abs() / (torch.maximum(t.abs(), p.abs()) + self.epsilon)
        self.sum_rel += rel.sum()
        self.count += rel.numel()

    def compute(self) -> Tensor:
        """Mean relative-L1 error over all elements, 0-d float64 (NaN before any)."""
        c = self.count
        return torch.where(c > 0, self.sum_rel / c.clamp(min=1), math.nan)


class UniqueRatio(RankMetric):
    """Mean over batches of the fraction of distinct rows of ``preds`` in the batch.

    tzrec's SID diversity proxy (distinct semantic-ID rows / batch size, averaged over
    non-empty batches). It depends on how samples are batched: a row repeated in two
    batches counts as distinct in each, and smaller batches read closer to 1; in the
    service a batch is one ingested batch (segment). ``target`` is not used (pass
    anything with ``n`` rows). NaN before a non-empty batch.

    >>> m = UniqueRatio()
    >>> m.update(torch.tensor([[1, 1], [1, 1]]), torch.zeros(2))
    >>> m.update(torch.tensor([[1, 1], [2, 2]]), torch.zeros(2))
    >>> m.compute().item()
    0.75
    """

    label_kind = "real"

    # states (registered by add_state in __init__)
    ratio_sum: Tensor
    count: Tensor

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        _add_sum_and_count(self, "ratio_sum")

    def _validate(self, preds: Any, target: Any, weights: Any, grouping_key: Any) -> Batch:
        who, p = _checked_preds(self, preds, weights, grouping_key)
        t = target if isinstance(target, Tensor) else torch.as_tensor(target)
        if t.dim() < 1 or t.shape[0] != p.shape[0]:
            raise ValueError(f"{who}: target must have {p.shape[0]} rows")
        return Batch(p, t, None, None)

    def update(
        self, preds: Any, target: Any = None, *, weights: Any = None, grouping_key: Any = None
    ) -> None:
        """Add one batch's ratio of distinct rows of ``preds`` (``(n,)`` or ``(n, L)``)."""
        if target is None:
            target = torch.zeros(len(preds))
        super().update(preds, target, weights=weights, grouping_key=grouping_key)

    def _update_batch(self, b: Batch) -> None:
        rows = b.preds.cpu().numpy()
        if rows.ndim == 1:
            rows = rows[:, None]
        distinct = len(np.unique(np.ascontiguousarray(rows), axis=0))
        self.ratio_sum += distinct / rows.shape[0]
        self.count += 1

    def compute(self) -> Tensor:
        """Mean distinct-row ratio over non-empty batches, 0-d float64 (NaN before any)."""
        c = self.count
        return torch.where(c > 0, self.ratio_sum / c.clamp(min=1), math.nan)
