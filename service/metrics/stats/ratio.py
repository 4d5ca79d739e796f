"""Delta-method influence values of the mean-type metrics: NE, MSE, MAE, accuracy.

All are smooth functions of (weighted) means of per-sample terms, so with ``n`` samples,
weights ``w`` (1 when absent) and ``W = Σ w``:

* MSE / MAE, ``θ = Σ w e / W`` (``e`` the squared or absolute error):
  ``ψ_i = n w_i (e_i - θ) / W``;
* accuracy (unweighted): ``ψ_i = c_i - θ`` with ``c_i`` 1 for a correct prediction;
* NE ``= a / H(r)``, ``a`` the weighted mean log loss, ``r`` the weighted positive rate and
  ``H(r) = -r log r - (1 - r) log(1 - r)``:
  ``ψ_i = n w_i / W · [(ℓ_i - a) / H(r) - a H'(r) / H(r)² · (y_i - r)]``,
  ``H'(r) = log((1 - r) / r)`` (0 where ``r`` is clamped to ``[eta, 1 - eta]``, as the
  metric clamps it).

The variance then comes from :mod:`.variance` (independent or clustered).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import torch

from rankboard.service.metrics.stats.columns import as_numpy

__all__ = [
    "MeanInfluence",
    "accuracy_influence",
    "mean_error_influence",
    "ne_influence",
    "recall_terms",
]


class MeanInfluence(NamedTuple):
    """Value and per-sample influence values (float64)."""

    value: float
    psi: np.ndarray


def _weights(weights: object | None, n: int) -> tuple[np.ndarray | None, float]:
    if weights is None:
        return None, float(n)
    w = as_numpy(weights).astype(np.float64).reshape(-1)
    return w, float(w.sum())


def mean_error_influence(
    preds: object, target: object, weights: object | None = None, *, squared: bool
) -> MeanInfluence:
    """Weighted MSE (``squared``) or MAE and its influence values.

    >>> r = mean_error_influence(np.array([1.0, 2.0]), np.array([2.0, 4.0]), squared=True)
    >>> r.value, r.psi.tolist()
    (2.5, [-1.5, 1.5])
    """
    p = as_numpy(preds).astype(np.float64).reshape(-1)
    t = as_numpy(target).astype(np.float64).reshape(-1)
    d = p - t
    e = d * d if squared else np.abs(d)
    w, total = _weights(weights, p.size)
    if not total > 0:
        return MeanInfluence(math.nan, np.zeros(p.size))
    if w is None:
        value = float(e.sum()) / total
        return MeanInfluence(value, e - value)
    value = float((w * e).sum()) / total
    return MeanInfluence(value, p.size * w * (e - value) / total)


def ne_influence(
    preds: object, target: object, weights: object | None = None, *, eta: float = 1e-12
) -> MeanInfluence:
    """Normalized entropy (as the metric: probabilities clamped to ``[eta, 1 - eta]``)
    and its delta-method influence values.

    >>> r = ne_influence(np.array([0.2, 0.6, 0.9]), np.array([0, 1, 1]))
    >>> round(r.value, 4), abs(round(float(r.psi.sum()), 12))
    (0.4395, 0.0)
    """
    p = np.clip(as_numpy(preds).astype(np.float64).reshape(-1), eta, 1.0 - eta)
    y = as_numpy(target).astype(np.float64).reshape(-1)
    n = p.size
    ce = -np.log(np.where(y > 0, p, 1.0 - p))  # the metric's (torchrec's) log loss
    w, total = _weights(weights, n)
    if not total > 0:
        return MeanInfluence(math.nan, np.zeros(n))
    if w is None:
        a = float(ce.sum()) / total
        r_raw = float(y.sum()) / total
    else:
        a = float((w * ce).sum()) / total
        r_raw = float((w * y).sum()) / total
    r = min(max(r_raw, eta), 1.0 - eta)
    h = -(r_raw * math.log(r) + (1.0 - r_raw) * math.log(1.0 - r))  # the metric's baseline
    dh = math.log((1.0 - r) / r) if eta < r_raw < 1.0 - eta else 0.0
    value = a / h
    term = (ce - a) / h - (a * dh / (h * h)) * (y - r_raw)
    psi = term if w is None else n * w * term / total
    return MeanInfluence(value, psi)


def accuracy_influence(
    preds: object, target: object, *, threshold: float = 0.5, top_k: int = 1
) -> MeanInfluence:
    """Accuracy (binary ``p > threshold``, or top-k of ``(n, C)`` scores by ``torch.topk``
    as the metric) and its influence values.

    >>> r = accuracy_influence(np.array([0.2, 0.7, 0.6]), np.array([0, 1, 0]))
    >>> round(r.value, 4), r.psi.round(4).tolist()
    (0.6667, [0.3333, 0.3333, -0.6667])
    """
    p = torch.as_tensor(as_numpy(preds))
    y = torch.as_tensor(as_numpy(target))
    n = int(p.shape[0])
    if n == 0:
        return MeanInfluence(math.nan, np.zeros(0))
    if p.dim() == 1:
        correct = (p > threshold).to(torch.int64) == y.to(torch.int64)
    else:
        k = min(int(top_k), p.shape[1])
        top = torch.topk(p, k, dim=1).indices
        correct = (top == y.to(torch.int64).unsqueeze(1)).any(1)
    c = correct.numpy().astype(np.float64)
    value = float(int(correct.sum())) / n
    return MeanInfluence(value, c - value)


def recall_terms(preds: object, target: object, top_k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per sample, the relevance found in the top ``top_k`` scores and the total relevance
    (float64), as :class:`~rankboard.service.metrics.RecallAtK` counts them: recall@k is
    ``Σ hits / Σ relevant``.

    >>> p = np.array([[0.9, 0.8, 0.1], [0.1, 0.2, 0.7]])
    >>> hits, rel = recall_terms(p, np.array([[1, 0, 1], [0, 0, 1]]), 1)
    >>> hits.tolist(), rel.tolist()
    ([1.0, 1.0], [2.0, 1.0])
    """
    p = torch.as_tensor(as_numpy(preds))
    y = torch.as_tensor(as_numpy(target))
    k = min(int(top_k), p.shape[1])
    top = torch.topk(p, k, dim=1).indices
    if y.dim() == 1:
        hits = (top == y.to(torch.int64).unsqueeze(1)).any(1).to(torch.float64)
        return hits.numpy(), np.ones(hits.shape[0])
    rel = y.to(torch.float64)
    return torch.gather(rel, 1, top).sum(1).numpy(), rel.sum(1).numpy()
