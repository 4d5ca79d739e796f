"""Binary and multiclass AUC: binned (one bucketize-and-count pass) or exact.

The binned modes (``thresholds: T`` threshold points, tzrec's and torchmetrics'
meaning; ``bins: B`` equal-width bins) keep a histogram of negatives and positives over
``T`` buckets, one ``O(n)`` pass a batch: :mod:`.histogram` defines them.
Exact mode sorts and uses tie-aware rank sums (see :mod:`.grouped_auc`), equal to
sklearn's ``roc_auc_score``. The histograms of the binned modes are in :mod:`.histogram`
(its names are importable from here too); this module holds the AUC functions.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from rankboard.service.metrics.functional import histogram
from rankboard.service.metrics.functional._validation import Batch, validate_batch
from rankboard.service.metrics.functional.grouped_auc import grouped_auc_stats

__all__ = [
    "binary_auc",
    "exact_auc",
    "exact_multiclass_auc",
    "multiclass_auc",
    "multiclass_auc_from_histogram",
    "multiclass_histogram",
]


def __getattr__(name: str) -> Any:
    """The binned modes' names (:mod:`.histogram`: ``bin_indices``, ``check_binning``,
    ...), importable from here as before."""
    if name in histogram.__all__:
        return getattr(histogram, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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


def _binned_batch(
    preds: Tensor, target: Tensor, thresholds: int, bins: int, what: str, **kinds: Any
) -> tuple[Batch, int, int]:
    """The validated batch and the checked ``thresholds``, ``bins`` of an AUC function;
    binned modes need probabilities. ``kinds``: :func:`validate_batch`'s label options."""
    thresholds, bins = histogram.check_binning(thresholds, bins, what)
    b = validate_batch(
        preds, target, prob_preds=thresholds > 0 or bins > 0, metric_name=what, **kinds
    )
    return b, thresholds, bins


def binary_auc(
    preds: Tensor,
    target: Tensor,
    *,
    weights: Tensor | None = None,
    thresholds: int = 0,
    bins: int = 0,
) -> Tensor:
    """Checked binary AUC: exact by default, binned with ``thresholds`` or ``bins``.

    ``thresholds=T``: ``T`` threshold points as in torchmetrics / tzrec;
    ``bins=B``: ``B`` equal-width bins (see the module docstring). Binned modes need
    probabilities in [0, 1]. Returns a 0-d float64 tensor, NaN when the data has no
    positive or no negative.

    >>> y = torch.tensor([0, 0, 1, 1])
    >>> binary_auc(torch.tensor([0.1, 0.6, 0.35, 0.8]), y).item()
    0.75
    >>> binary_auc(torch.tensor([0.1, 0.6, 0.35, 0.8]), y, bins=2).item()
    0.5
    >>> binary_auc(torch.tensor([0.1, 0.6, 0.35, 0.8]), y, thresholds=3).item()
    0.5
    """
    b, thresholds, bins = _binned_batch(
        preds, target, thresholds, bins, "auc", label_kind="binary", weights=weights
    )
    if thresholds > 0:
        h = torch.zeros(2 * thresholds, dtype=torch.float64, device=b.preds.device)
        histogram.add_threshold_counts(h, b.preds, b.target, thresholds, b.weights)
        return histogram.auc_from_threshold_histogram(h)
    if bins > 0:
        return histogram.auc_from_histogram(
            histogram.binned_histogram(b.preds, b.target, bins, b.weights)
        )
    return exact_auc(b.preds, b.target, b.weights)


def multiclass_histogram(
    preds: Tensor, target: Tensor, bins: int, *, points: bool = False
) -> Tensor:
    """One-vs-rest histograms, shape ``(C, 2 * bins)``, of ``(n, C)`` probabilities.

    ``points``: buckets between ``bins`` threshold points (:func:`bin_indices`), else
    equal-width bins.
    """
    c = preds.shape[1]
    classes = torch.arange(c, device=preds.device)
    if points:
        idx = histogram.bin_indices(preds.reshape(-1), bins).reshape(preds.shape)
    else:
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


def multiclass_auc_from_histogram(
    hist: Tensor, average: str = "macro", *, points: bool = False
) -> Tensor:
    """Average of one-vs-rest AUCs from ``(C, 2 * bins)`` histograms (``points``: threshold
    buckets, see :func:`auc_from_threshold_histogram`)."""
    bins = hist.shape[-1] // 2
    per_class = (
        histogram.auc_from_threshold_histogram(hist)
        if points
        else histogram.auc_from_histogram(hist)
    )
    return _average(per_class, hist[:, bins:].sum(-1), average)


def multiclass_auc(
    preds: Tensor,
    target: Tensor,
    *,
    thresholds: int = 0,
    average: str = "macro",
    bins: int = 0,
) -> Tensor:
    """One-vs-rest AUC of ``(n, C)`` probabilities against integer class ids.

    Exact by default; ``thresholds`` threshold points or ``bins`` equal-width bins as in
    :func:`binary_auc`. ``average="macro"``: mean over the classes whose AUC is defined
    (both present); ``"weighted"``: weighted by each class's support (its number of
    samples). NaN when no class is defined.

    >>> p = torch.tensor([[0.7, 0.2, 0.1], [0.2, 0.5, 0.3], [0.1, 0.3, 0.6], [0.4, 0.4, 0.2]])
    >>> multiclass_auc(p, torch.tensor([0, 1, 2, 1])).item()
    1.0
    """
    if average not in ("macro", "weighted"):
        raise ValueError(f"multiclass_auc: average must be 'macro' or 'weighted', got {average!r}")
    b, thresholds, bins = _binned_batch(
        preds,
        target,
        thresholds,
        bins,
        "multiclass_auc",
        label_kind="multiclass",
        multiclass_preds=True,
    )
    if thresholds or bins:
        pts = thresholds > 0
        hist = multiclass_histogram(b.preds, b.target, thresholds or bins, points=pts)
        return multiclass_auc_from_histogram(hist, average, points=pts)
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
