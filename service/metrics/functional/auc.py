"""Binary and multiclass AUC: binned (one bucketize-and-count pass) or exact.

Binned mode puts a probability ``p`` in bin ``clamp(floor(p * bins), 0, bins - 1)`` and
keeps a histogram of negatives (first ``bins`` entries) and positives (last ``bins``).
The AUC of a histogram counts pairs in the same bin one half, which is the trapezoidal
AUC of the ROC curve through the bin edges. Exact mode sorts and uses tie-aware rank sums
(see :mod:`.grouped_auc`), equal to sklearn's ``roc_auc_score``.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from rankboard.service.metrics.functional._validation import to_numpy, validate_batch
from rankboard.service.metrics.functional.grouped_auc import grouped_auc_stats

__all__ = [
    "add_binned_counts",
    "auc_from_histogram",
    "binary_auc",
    "binned_histogram",
    "exact_auc",
    "multiclass_auc",
    "multiclass_auc_from_histogram",
    "multiclass_histogram",
]


def binned_histogram(
    preds: Tensor, target: Tensor, bins: int, weights: Tensor | None = None
) -> Tensor:
    """Counts of negatives then positives per bin, shape ``(2 * bins,)`` (unchecked inputs).

    >>> binned_histogram(torch.tensor([0.1, 0.7, 1.0]), torch.tensor([0.0, 1.0, 1.0]), 2).tolist()
    [1.0, 0.0, 0.0, 2.0]
    """
    idx = torch.clamp(preds * bins, 0, bins - 1).to(torch.int64)
    idx += target.to(torch.int64) * bins
    w = None if weights is None else weights.to(torch.float64)
    return torch.bincount(idx, weights=w, minlength=2 * bins).to(torch.float64)


def add_binned_counts(
    hist: Tensor, preds: Tensor, target: Tensor, bins: int, weights: Tensor | None = None
) -> None:
    """Add :func:`binned_histogram` counts into the float64 ``hist`` in place.

    On the CPU this is numpy on zero-copy views (a bincount on 4096 samples costs a few
    microseconds there, several torch kernels cost more); elsewhere it stays in torch.

    >>> h = torch.zeros(4, dtype=torch.float64)
    >>> add_binned_counts(h, torch.tensor([0.1, 0.7, 1.0]), torch.tensor([0.0, 1.0, 1.0]), 2)
    >>> h.tolist()
    [1.0, 0.0, 0.0, 2.0]
    """
    if hist.device.type == "cpu" and preds.device.type == "cpu" and hist.is_contiguous():
        key = to_numpy(preds) * np.float32(bins)
        np.minimum(key, np.float32(bins - 1), out=key)
        key += to_numpy(target) * np.float32(bins)
        idx = key.astype(np.intp)
        w = None if weights is None else to_numpy(weights)
        counts = np.bincount(idx, weights=w, minlength=2 * bins)
        h = hist.numpy()
        h += counts
        return
    hist += binned_histogram(preds, target, bins, weights)


def auc_from_histogram(hist: Tensor) -> Tensor:
    """AUC of a ``(..., 2 * bins)`` histogram; NaN without positives or negatives.

    >>> auc_from_histogram(torch.tensor([1.0, 0.0, 0.0, 2.0])).item()
    1.0
    """
    hist = hist.to(torch.float64)
    bins = hist.shape[-1] // 2
    neg, pos = hist[..., :bins], hist[..., bins:]
    cneg = torch.cumsum(neg, -1) - neg
    u = (pos * (cneg + 0.5 * neg)).sum(-1)
    p, n = pos.sum(-1), neg.sum(-1)
    ok = (p > 0) & (n > 0)
    return torch.where(ok, u / torch.where(ok, p * n, torch.ones_like(p)), math.nan)


def exact_auc(preds: Tensor, target: Tensor, weights: Tensor | None = None) -> Tensor:
    """Exact (weighted) AUC with ties counted one half (unchecked inputs); NaN if undefined.

    >>> exact_auc(torch.tensor([0.1, 0.4, 0.4, 0.8]), torch.tensor([0, 0, 1, 1])).item()
    0.875
    """
    s = grouped_auc_stats(preds, target, None, weights)
    if s.u.numel() == 0:
        return torch.tensor(math.nan, dtype=torch.float64, device=preds.device)
    ok = (s.pos > 0) & (s.neg > 0)
    return torch.where(ok, s.u / torch.where(ok, s.pos * s.neg, 1.0), math.nan)[0]


def binary_auc(
    preds: Tensor,
    target: Tensor,
    *,
    weights: Tensor | None = None,
    thresholds: int = 0,
) -> Tensor:
    """Checked binary AUC: exact when ``thresholds == 0``, else binned into that many bins.

    Binned mode needs probabilities in [0, 1]. Returns a 0-d float64 tensor, NaN when the
    data has no positive or no negative.

    >>> y = torch.tensor([0, 0, 1, 1])
    >>> binary_auc(torch.tensor([0.1, 0.6, 0.35, 0.8]), y).item()
    0.75
    >>> binary_auc(torch.tensor([0.1, 0.6, 0.35, 0.8]), y, thresholds=2).item()
    0.5
    """
    b = validate_batch(
        preds,
        target,
        label_kind="binary",
        weights=weights,
        supports_weights=True,
        prob_preds=thresholds > 0,
        metric_name="auc",
    )
    if thresholds > 0:
        return auc_from_histogram(binned_histogram(b.preds, b.target, thresholds, b.weights))
    return exact_auc(b.preds, b.target, b.weights)


def multiclass_histogram(preds: Tensor, target: Tensor, bins: int) -> Tensor:
    """One-vs-rest histograms, shape ``(C, 2 * bins)``, of ``(n, C)`` probabilities."""
    c = preds.shape[1]
    classes = torch.arange(c, device=preds.device)
    idx = torch.clamp(preds * bins, 0, bins - 1).to(torch.int64)
    idx += (target.unsqueeze(1) == classes).to(torch.int64) * bins + classes * (2 * bins)
    counts = torch.bincount(idx.reshape(-1), minlength=c * 2 * bins)
    return counts.to(torch.float64).reshape(c, 2 * bins)


def _average(per_class: Tensor, support: Tensor, average: str) -> Tensor:
    ok = ~torch.isnan(per_class)
    if average == "weighted":
        w = torch.where(ok, support, 0.0)
        total = w.sum()
        val = torch.where(ok, per_class, 0.0).mul(w).sum() / total
        return torch.where(total > 0, val, math.nan)
    cnt = ok.sum()
    val = torch.where(ok, per_class, 0.0).sum() / cnt.clamp(min=1)
    return torch.where(cnt > 0, val, math.nan)


def multiclass_auc_from_histogram(hist: Tensor, average: str = "macro") -> Tensor:
    """Average of one-vs-rest AUCs from ``(C, 2 * bins)`` histograms."""
    bins = hist.shape[-1] // 2
    return _average(auc_from_histogram(hist), hist[:, bins:].sum(-1), average)


def multiclass_auc(
    preds: Tensor,
    target: Tensor,
    *,
    thresholds: int = 0,
    average: str = "macro",
) -> Tensor:
    """One-vs-rest AUC of ``(n, C)`` probabilities against integer class ids.

    ``average="macro"``: mean over the classes whose AUC is defined (both present);
    ``"weighted"``: weighted by each class's support (its number of samples). NaN when no
    class is defined.

    >>> p = torch.tensor([[0.7, 0.2, 0.1], [0.2, 0.5, 0.3], [0.1, 0.3, 0.6], [0.4, 0.4, 0.2]])
    >>> multiclass_auc(p, torch.tensor([0, 1, 2, 1])).item()
    1.0
    """
    if average not in ("macro", "weighted"):
        raise ValueError(f"multiclass_auc: average must be 'macro' or 'weighted', got {average!r}")
    b = validate_batch(
        preds,
        target,
        label_kind="multiclass",
        multiclass_preds=True,
        prob_preds=thresholds > 0,
        metric_name="multiclass_auc",
    )
    if thresholds > 0:
        return multiclass_auc_from_histogram(
            multiclass_histogram(b.preds, b.target, thresholds), average
        )
    return exact_multiclass_auc(b.preds, b.target, average)


def exact_multiclass_auc(preds: Tensor, target: Tensor, average: str = "macro") -> Tensor:
    """Exact one-vs-rest AUC averaged as in :func:`multiclass_auc` (unchecked inputs)."""
    c = preds.shape[1]
    per_class = (
        torch.stack([exact_auc(preds[:, k], (target == k).to(torch.float32)) for k in range(c)])
        if preds.shape[0]
        else torch.full((c,), math.nan, dtype=torch.float64)
    )
    support = torch.bincount(target, minlength=c).to(torch.float64)
    return _average(per_class, support, average)
