"""Grouped AUC and grouped XAUC: the groups (e.g. users) are the independent units.

GroupedAUC is the unweighted mean of the per-group AUCs ``A_g`` over the ``G`` groups with
both classes, so its standard error comes from their spread (the delta method over
groups, here a plain mean): ``SE² = Σ_g (A_g - Ā)² / (G (G - 1))``. GroupedXAUC is the
size-weighted mean of the per-group XAUCs over groups of two or more samples, a ratio of
group means ``Σ n_g X_g / Σ n_g``, whose delta method over groups has group influence
``φ_g = (n_g X_g - θ n_g) / mean(n_g)`` and ``SE² = Σ φ_g² / (G (G - 1))``.

Per-sample influence values spread a group's influence evenly over its samples,
``ψ_i = (n / G) φ_g / n_g`` (``φ_g = A_g - Ā`` for grouped AUC), so that summing ``ψ``
within the groups (or any coarser clusters) and pairing by sample id compose with
:mod:`.variance`. The per-group values come from the metric's own kernels, so the point
value is the metric's.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import torch

from rankboard.service.metrics.functional.grouped_auc import (
    grouped_auc_from_stats,
    grouped_auc_stats,
)
from rankboard.service.metrics.functional.xauc import grouped_xauc_from_stats, grouped_xauc_stats
from rankboard.service.metrics.stats.columns import as_numpy
from rankboard.service.metrics.stats.variance import dense_codes

__all__ = ["GroupInfluence", "grouped_auc_influence", "grouped_xauc_influence"]


class GroupInfluence(NamedTuple):
    """Value, per-group influence over counted groups, per-sample spread, and bookkeeping."""

    value: float
    group_psi: np.ndarray  # φ_g of the counted groups (mean 0)
    psi: np.ndarray  # per sample, (n / G) φ_g / n_g; 0 outside counted groups
    counted: np.ndarray  # per sample: in a counted group
    groups_counted: int
    variance: float  # Σ φ_g² / (G (G - 1)); NaN below two groups


_EMPTY = GroupInfluence(math.nan, np.zeros(0), np.zeros(0), np.zeros(0, bool), 0, math.nan)


def _columns(
    preds: object, target: object, keys: object
) -> tuple[np.ndarray, torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """``(keys, preds, target, keys)``: int64 numpy keys, then the kernels' tensors (float32
    predictions and targets, int64 keys); None without samples."""
    k = as_numpy(keys).astype(np.int64, copy=False).reshape(-1)
    if k.size == 0:
        return None
    pt = torch.as_tensor(as_numpy(preds)).reshape(-1).to(torch.float32)
    yt = torch.as_tensor(as_numpy(target)).reshape(-1).to(torch.float32)
    return k, pt, yt, torch.from_numpy(np.ascontiguousarray(k))


def _sample_group(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per sample, the index of its group among the present groups (ascending key), and
    the group sizes; matches the group order of the metric's per-group statistics."""
    codes, bound = dense_codes(keys)
    sizes_all = np.bincount(codes, minlength=bound)
    present = sizes_all > 0
    lookup = np.cumsum(present.astype(np.int64)) - 1
    return lookup[codes].astype(np.intp), sizes_all[present]


def _spread(
    value: float, phi_all: np.ndarray, valid: np.ndarray, gidx: np.ndarray, sizes: np.ndarray
) -> GroupInfluence:
    n = gidx.size
    g = int(valid.sum())
    phi = np.where(valid, phi_all, 0.0)
    per_sample = np.zeros(phi.size)
    if g:
        per_sample[valid] = (n / g) * phi[valid] / sizes[valid]
    var = float(np.sum(phi[valid] ** 2) / (g * (g - 1))) if g >= 2 else math.nan
    return GroupInfluence(value, phi[valid], per_sample[gidx], valid[gidx], g, var)


def grouped_auc_influence(preds: object, target: object, keys: object) -> GroupInfluence:
    """Grouped AUC (mean over groups with both classes) and its influence over groups.

    >>> p = np.array([0.9, 0.1, 0.5, 0.5, 0.3, 0.8, 0.2, 0.6])
    >>> y = np.array([1, 0, 1, 0, 1, 0, 0, 1])
    >>> g = np.array([7, 7, 8, 8, 9, 9, 5, 5])
    >>> r = grouped_auc_influence(p, y, g)
    >>> r.value, r.groups_counted, r.group_psi.tolist()
    (0.625, 4, [0.375, 0.375, -0.125, -0.625])
    """
    cols = _columns(preds, target, keys)
    if cols is None:
        return _EMPTY
    k, stats = cols[0], grouped_auc_stats(*cols[1:])
    value, _ = grouped_auc_from_stats(stats)
    u, pos, neg = stats.u.numpy(), stats.pos.numpy(), stats.neg.numpy()
    valid = (pos > 0) & (neg > 0)
    auc_g = np.where(valid, u / np.where(valid, pos * neg, 1.0), 0.0)
    gidx, sizes = _sample_group(k)
    v = float(value)
    return _spread(v, auc_g - v, valid, gidx, sizes)


def grouped_xauc_influence(preds: object, target: object, keys: object) -> GroupInfluence:
    """Grouped XAUC (size-weighted over groups of >= 2) and its ratio influence over groups.

    >>> p = np.array([0.1, 0.2, 0.3, 0.9, 0.5, 0.4, 0.3])
    >>> t = np.array([1.0, 2.0, 3.0, 1.0, 2.0, 1.0, 2.0])
    >>> r = grouped_xauc_influence(p, t, np.array([1, 1, 1, 2, 2, 3, 3]))
    >>> round(r.value, 4), r.groups_counted
    (0.4286, 3)
    """
    cols = _columns(preds, target, keys)
    if cols is None:
        return _EMPTY
    k, stats = cols[0], grouped_xauc_stats(*cols[1:])
    value, _ = grouped_xauc_from_stats(stats)
    conc = stats.concordant.numpy().astype(np.float64)
    sizes_g = stats.sizes.numpy().astype(np.float64)
    valid = sizes_g >= 2
    pairs = np.where(valid, sizes_g * (sizes_g - 1) / 2, 1.0)
    x_g = conc / pairs
    v = float(value)
    mean_b = float(sizes_g[valid].mean()) if valid.any() else 1.0
    phi = (sizes_g * x_g - v * sizes_g) / mean_b
    gidx, sizes = _sample_group(k)
    return _spread(v, phi, valid, gidx, sizes)
