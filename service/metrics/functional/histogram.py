"""The binned AUC modes: threshold points and equal-width bins, their histograms and AUCs.

Two binned modes keep the same state, a histogram of negatives (first ``T`` entries)
and positives (last ``T``) over ``T`` buckets:

* **threshold points** (``thresholds: T`` of a tzrec config, torchmetrics' meaning):
  the ``T`` points ``torch.linspace(0, 1, T)``; a prediction ``p`` falls in bucket
  ``k`` = the index of the largest point ``<= p`` (:func:`bin_indices`), so that
  "``p >= point j``" is "bucket ``>= j``". The AUC is torchmetrics' trapezoid over the
  ``T`` ROC points (``p >= point j`` predicted positive), which starts at the point of
  the last threshold (1.0), not at (0, 0): positive/negative pairs that both predict
  exactly 1.0 add nothing (:func:`auc_from_threshold_histogram`).
* **equal-width bins** (rankboard's ``bins: B``): bin ``clamp(floor(p * B), 0, B - 1)``;
  pairs in one bin count one half, the trapezoidal AUC through the bin edges
  (:func:`auc_from_histogram`).

Both updates are one ``O(n)`` pass (a multiply, a floor, a one-step correction against
the points, a bincount). ``T`` and ``B`` are bounded by :data:`MAX_THRESHOLDS` (the
state is ``2 x T`` float64 per metric, and per class for multiclass AUC).
The AUC functions (binned and exact) are in :mod:`.auc`, which re-exports this module.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from rankboard.service.metrics.functional._validation import to_numpy

__all__ = [
    "MAX_THRESHOLDS",
    "add_binned_counts",
    "add_threshold_counts",
    "auc_from_histogram",
    "auc_from_threshold_histogram",
    "bin_indices",
    "binned_histogram",
    "check_binning",
    "check_thresholds",
    "equal_width_indices",
    "threshold_points",
]


MAX_THRESHOLDS = 100_000
"""Upper bound on ``thresholds`` / ``bins`` (a histogram of ``2 x 100,000`` float64 is
1.6 MB per metric, per class for multiclass AUC; issue 15 item 6)."""


def check_thresholds(value: int, what: str, *, points: bool) -> int:
    """``value`` as an int if it is a valid ``thresholds`` (``points``) or ``bins`` setting.

    0 means exact; threshold points need at least 2 (one point has no ROC area); both are
    at most :data:`MAX_THRESHOLDS`. Raises ``ValueError`` naming ``what`` otherwise.

    >>> check_thresholds(200, "AUC", points=True)
    200
    >>> check_thresholds(10**9, "AUC", points=True)
    Traceback (most recent call last):
    ...
    ValueError: AUC: thresholds must be at most 100000 (0 = exact), got 1000000000
    """
    name = "thresholds" if points else "bins"
    v = int(value)
    if v < 0:
        raise ValueError(f"{what}: {name} must be >= 0, got {v}")
    if v > MAX_THRESHOLDS:
        raise ValueError(f"{what}: {name} must be at most {MAX_THRESHOLDS} (0 = exact), got {v}")
    if points and v == 1:
        raise ValueError(
            f"{what}: thresholds must be 0 (exact) or at least 2 threshold points, got 1"
        )
    return v


def check_binning(thresholds: int, bins: int, what: str) -> tuple[int, int]:
    """``(thresholds, bins)`` checked by :func:`check_thresholds`; at most one of them set.

    >>> check_binning(0, 10, "AUC")
    (0, 10)
    >>> check_binning(200, 10, "AUC")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: AUC: give thresholds (threshold points, tzrec's meaning) or bins ...
    """
    t = check_thresholds(thresholds, what, points=True)
    b = check_thresholds(bins, what, points=False)
    if t and b:
        raise ValueError(
            f"{what}: give thresholds (threshold points, tzrec's meaning) or bins "
            "(equal-width bins), not both"
        )
    return t, b


_points_cache: dict[int, np.ndarray] = {}


def threshold_points(thresholds: int) -> Tensor:
    """The ``thresholds`` points of a tzrec/torchmetrics config: ``linspace(0, 1, T)``, float32.

    >>> threshold_points(5).tolist()
    [0.0, 0.25, 0.5, 0.75, 1.0]
    """
    return torch.from_numpy(_points_np(thresholds).copy())


def _points_np(thresholds: int) -> np.ndarray:
    pts = _points_cache.get(thresholds)
    if pts is None:
        # torch's linspace, not numpy's: the float32 points torchmetrics compares against
        pts = torch.linspace(0, 1, thresholds, dtype=torch.float32).numpy()
        pts.setflags(write=False)
        if len(_points_cache) > 64:
            _points_cache.clear()
        _points_cache[thresholds] = pts
    return pts


def bin_indices(preds: Tensor, thresholds: int) -> Tensor:
    """Bucket of every prediction among ``thresholds`` threshold points (int64, ``(n,)``).

    The bucket is the index of the largest point of ``linspace(0, 1, thresholds)`` that
    is ``<= p`` (``searchsorted(points, p, right=True) - 1``), so a prediction is counted
    positive at threshold ``j`` (torchmetrics: ``p >= point j``) exactly when its bucket
    is ``>= j``. Predictions must lie in [0, 1] (unchecked). ``O(n)``: a multiply and a
    floor, then a one-step correction against the float32 points.

    >>> bin_indices(torch.tensor([0.0, 0.24, 0.25, 0.6, 0.99, 1.0]), 5).tolist()
    [0, 0, 1, 2, 3, 4]
    """
    t = int(thresholds)
    if preds.device.type == "cpu":
        return torch.from_numpy(_bin_indices_np(to_numpy(preds), t))
    return _bin_indices_torch(preds, t)


def _bin_indices_torch(preds: Tensor, t: int) -> Tensor:
    """:func:`bin_indices` in torch ops (any device)."""
    pts = threshold_points(t).to(preds.device)
    p = preds.to(torch.float32)
    k = torch.clamp((p * (t - 1)).to(torch.int64), 0, t - 1)
    k -= (pts[k] > p).to(torch.int64)
    k = torch.clamp(k, 0, t - 1)
    nxt = torch.clamp(k + 1, max=t - 1)
    k += ((k < t - 1) & (pts[nxt] <= p)).to(torch.int64)
    return k


def _bin_indices_np(p: np.ndarray, t: int) -> np.ndarray:
    pts = _points_np(t)
    key = p * np.float32(t - 1)
    np.clip(key, 0, t - 1, out=key)
    k = key.astype(np.intp)
    k -= pts[k] > p
    np.maximum(k, 0, out=k)
    nxt = np.minimum(k + 1, t - 1)
    k += (pts[nxt] <= p) & (nxt > k)
    return k


def equal_width_indices(preds: Tensor, bins: int) -> Tensor:
    """Bin of every prediction among ``bins`` equal-width bins on [0, 1] (int64, ``(n,)``):
    ``clamp(floor(p * bins), 0, bins - 1)``, the buckets of ``auc { bins: B }``.

    >>> equal_width_indices(torch.tensor([0.0, 0.24, 0.25, 1.0]), 4).tolist()
    [0, 0, 1, 3]
    """
    return torch.clamp(preds * bins, 0, bins - 1).to(torch.int64)


def add_threshold_counts(
    hist: Tensor, preds: Tensor, target: Tensor, thresholds: int, weights: Tensor | None = None
) -> None:
    """Add the negatives / positives of every threshold bucket into ``hist`` in place.

    ``hist`` is float64 ``(2 * thresholds,)``: negatives by bucket (:func:`bin_indices`),
    then positives.

    >>> h = torch.zeros(6, dtype=torch.float64)
    >>> add_threshold_counts(h, torch.tensor([0.1, 0.5, 1.0]), torch.tensor([0.0, 1.0, 1.0]), 3)
    >>> h.tolist()
    [1.0, 0.0, 0.0, 0.0, 1.0, 1.0]
    """
    t = int(thresholds)
    if hist.device.type == "cpu" and preds.device.type == "cpu" and hist.is_contiguous():
        idx_np = _bin_indices_np(to_numpy(preds), t)
        idx_np += (to_numpy(target) != 0).astype(np.intp) * t
        w_np = None if weights is None else to_numpy(weights)
        h = hist.numpy()
        h += np.bincount(idx_np, weights=w_np, minlength=2 * t)
        return
    idx = bin_indices(preds, t) + target.to(torch.int64) * t
    w = None if weights is None else weights.to(torch.float64)
    hist += torch.bincount(idx, weights=w, minlength=2 * t).to(torch.float64)


def auc_from_threshold_histogram(hist: Tensor) -> Tensor:
    """torchmetrics' binned AUC of a ``(..., 2 * T)`` threshold-bucket histogram.

    The ROC points are ``(FPR_j, TPR_j)`` at ``p >= point j`` for ``j = 0 .. T-1``; the
    area is their trapezoid, ``sum_{j < T-1} neg_j (pos_{>j} + pos_j / 2) / (N P)``. NaN
    without positives or negatives (torchmetrics: 0 with a warning).

    >>> auc_from_threshold_histogram(torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 1.0])).item()
    1.0
    """
    hist = hist.to(torch.float64)
    t = hist.shape[-1] // 2
    neg, pos = hist[..., :t], hist[..., t:]
    above = pos.sum(-1, keepdim=True) - torch.cumsum(pos, -1)  # positives in buckets > j
    u = (neg[..., :-1] * (above[..., :-1] + 0.5 * pos[..., :-1])).sum(-1)
    p, n = pos.sum(-1), neg.sum(-1)
    ok = (p > 0) & (n > 0)
    return torch.where(ok, u / torch.where(ok, p * n, torch.ones_like(p)), math.nan)


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
