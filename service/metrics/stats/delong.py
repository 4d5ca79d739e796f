"""DeLong's AUC variance with midranks in O(n log n) (Sun & Xu 2014), weighted, with ties.

One sort of the scores gives the tie groups; per tie group the (weighted) positives and
negatives, and their running totals, give every sample's *placement value*: for a
positive, the (weighted) share of negatives ranked below it (ties one half), for a
negative the share of positives ranked above it. With ``W1``/``W0`` the positive and
negative weight and ``n`` the samples, the influence values are

    ψ_i = n w_i (V10_i - θ) / W1   (positives),   ψ_j = n w_j (V01_j - θ) / W0   (negatives)

so that ``θ̂ - θ ≈ mean(ψ)``; the stratified variance of :mod:`.variance` with the label
as stratum is DeLong's ``S10/n1 + S01/n0`` exactly (unit weights), and with weights
``n1/(n1-1) Σ w_i² (V10_i - θ)² / W1² + n0/(n0-1) Σ w_j² (V01_j - θ)² / W0²``. Paired
(two scores of the same samples): the same on ``ψ_B - ψ_A``, which is DeLong's
``Var_A + Var_B - 2 Cov_AB``. Binned AUC runs the same on the bucket indices (buckets are
the tie groups): equal-width bins as the metric's histogram, or threshold points by
:func:`rankboard.service.metrics.functional.auc.bin_indices`, the function the metric
itself uses. Counts are float64 (no ``n1 · n0`` overflow).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import torch
from scipy.stats import norm

from rankboard.service.metrics.stats.columns import as_numpy
from rankboard.service.metrics.stats.sequential import validate_alpha
from rankboard.service.metrics.stats.variance import influence_variance

__all__ = [
    "AUCInfluence",
    "auc_influence",
    "auc_interval",
    "binned_auc_influence",
    "delong_variance",
    "equal_width_bins",
    "multiclass_auc_influence",
    "paired_delong",
]


class AUCInfluence(NamedTuple):
    """AUC, per-sample influence values ψ (float64) and the label strata (int8)."""

    value: float
    psi: np.ndarray
    strata: np.ndarray


def _sort_key(p: np.ndarray, out: np.ndarray) -> np.ndarray:
    """Order-preserving uint64 image of float32 scores in ``[0, 2**32)`` (-0.0 == 0.0),
    written into ``out`` (few temporaries: at 10M samples allocation dominates)."""
    bits = (p + np.float32(0.0)).view(np.int32)
    key = out.view(np.int64)
    key[...] = bits
    np.bitwise_xor(key, 0x7FFFFFFF, out=key, where=bits < 0)
    key += 1 << 31
    return out


def _exact_influence(p: np.ndarray, y: np.ndarray, w: np.ndarray | None) -> AUCInfluence:
    """Exact AUC by one packed sort: (prediction key, label, index) in one uint64, so the
    labels come out in sorted order without a gather and tie groups are runs of equal
    prediction key; per-group placements, then one scatter of ψ back to sample order.
    Buffers are reused in place: at 10M samples every fresh array costs page faults."""
    n = y.size
    pos = y > 0.5
    strata = pos.view(np.int8)
    sh = max(1, int(n - 1).bit_length())
    if 33 + sh > 64:  # pragma: no cover - more than 2**31 samples
        raise OverflowError("more than 2**31 samples")
    u1, u_sh, u_sh1 = np.uint64(1), np.uint64(sh), np.uint64(sh + 1)
    packed = _sort_key(p, np.empty(n, dtype=np.uint64))
    packed <<= u1
    packed |= pos
    packed <<= u_sh
    buf = np.arange(n, dtype=np.uint64)
    packed |= buf
    packed.sort()
    np.bitwise_and(packed, np.uint64((1 << sh) - 1), out=buf)
    order = buf.view(np.int64)  # sample index of each sorted position
    lab_u = np.right_shift(packed, u_sh)
    lab_u &= u1
    lab = lab_u.view(np.int64)  # label of each sorted position
    packed >>= u_sh1  # the score key, sorted
    new = np.empty(n, dtype=bool)
    new[0] = True
    np.not_equal(packed[1:], packed[:-1], out=new[1:])
    gid = packed.view(np.int64)  # reuse: group of each sorted position
    gid[...] = new  # cast first: a cumsum that casts bools holds the GIL for the pass
    np.cumsum(gid, out=gid)
    gid -= 1
    starts = np.flatnonzero(new)
    del new
    bounds = np.append(starts, n)
    ws = None
    if w is None:
        cpos = np.concatenate(([0], np.cumsum(lab)))[bounds]
        pos_g = np.diff(cpos)
        neg_g = np.diff(bounds) - pos_g
        n1, n0 = int(cpos[-1]), n - int(cpos[-1])
        if n1 == 0 or n0 == 0:
            return AUCInfluence(math.nan, np.zeros(n), strata)
        cneg = np.cumsum(neg_g) - neg_g
        u2 = int(np.sum(pos_g * (2 * cneg + neg_g)))
        w1, w0 = float(n1), float(n0)
        value = (u2 / 2) / (w1 * w0)
        pos_f, neg_f, cneg_f = (x.astype(np.float64) for x in (pos_g, neg_g, cneg))
    else:
        ws = np.asarray(w, dtype=np.float64)[order]
        wp = ws * lab
        c1 = np.concatenate(([0.0], np.cumsum(wp)))[bounds]
        wp -= ws
        c0 = np.concatenate(([0.0], np.cumsum(wp)))[bounds]
        del wp
        pos_f, neg_f = np.diff(c1), -np.diff(c0)
        w1, w0 = float(c1[-1]), -float(c0[-1])
        if not (w1 > 0 and w0 > 0):
            return AUCInfluence(math.nan, np.zeros(n), strata)
        cneg_f = np.cumsum(neg_f) - neg_f
        value = float(np.sum(pos_f * (cneg_f + 0.5 * neg_f))) / (w1 * w0)
    table = np.empty((starts.size, 2))
    table[:, 1] = (n / w1) * ((cneg_f + 0.5 * neg_f) / w0 - value)  # positives: V10
    table[:, 0] = (n / w0) * ((w1 - np.cumsum(pos_f) + 0.5 * pos_f) / w1 - value)  # V01
    gid *= 2
    gid += lab
    psi_sorted = lab_u.view(np.float64)  # reuse the label buffer
    np.take(table.reshape(-1), gid, out=psi_sorted)
    if ws is not None:
        psi_sorted *= ws
    psi = np.empty(n)
    psi[order] = psi_sorted
    return AUCInfluence(value, psi, strata)


def _influence_from_ties(
    tie: np.ndarray,
    groups: int,
    y: np.ndarray,
    weights: np.ndarray | None,
    *,
    untied_last: bool = False,
) -> AUCInfluence:
    """Placement values from per-sample tie groups (ascending ranks ``0..groups-1``).

    ``untied_last``: a positive and a negative both in the last group count 0, not one
    half (torchmetrics' threshold-point AUC, whose ROC starts at the last point).
    """
    n = y.size
    pos = y > 0.5
    strata = pos.astype(np.int8)
    if weights is None:
        pos_g = np.bincount(tie[pos], minlength=groups)
        neg_g = np.bincount(tie[~pos], minlength=groups)
        cneg_before = np.cumsum(neg_g) - neg_g
        tied_neg = neg_g.copy()
        if untied_last:
            tied_neg[-1] = 0
        u2 = int(np.sum(pos_g * (2 * cneg_before + tied_neg)))
        n1, n0 = int(pos_g.sum()), int(neg_g.sum())
        w1, w0 = float(n1), float(n0)
        if n1 == 0 or n0 == 0:
            return AUCInfluence(math.nan, np.zeros(n), strata)
        value = (u2 / 2) / (w1 * w0)
        pos_f: np.ndarray = pos_g.astype(np.float64)
        neg_f: np.ndarray = neg_g.astype(np.float64)
        cneg_f: np.ndarray = cneg_before.astype(np.float64)
        half = np.full(groups, 0.5)
    else:
        w = np.asarray(weights, dtype=np.float64)
        pos_f = np.bincount(tie, weights=np.where(pos, w, 0.0), minlength=groups)
        neg_f = np.bincount(tie, weights=np.where(pos, 0.0, w), minlength=groups)
        cneg_f = np.cumsum(neg_f) - neg_f
        w1, w0 = float(pos_f.sum()), float(neg_f.sum())
        if not (w1 > 0 and w0 > 0):
            return AUCInfluence(math.nan, np.zeros(n), strata)
        half = np.full(groups, 0.5)
        if untied_last:
            half[-1] = 0.0
        value = float(np.sum(pos_f * (cneg_f + half * neg_f))) / (w1 * w0)
    if untied_last:
        half[-1] = 0.0
    cpos_after = w1 - np.cumsum(pos_f)
    v10 = (cneg_f + half * neg_f) / w0  # per tie group, for its positives
    v01 = (cpos_after + half * pos_f) / w1  # per tie group, for its negatives
    scale1, scale0 = n / w1, n / w0
    if weights is None:
        psi = np.where(pos, scale1 * (v10 - value)[tie], scale0 * (v01 - value)[tie])
    else:
        psi = w * np.where(pos, scale1 * (v10 - value)[tie], scale0 * (v01 - value)[tie])
    return AUCInfluence(value, psi, strata)


def auc_influence(preds: object, target: object, weights: object | None = None) -> AUCInfluence:
    """Exact (weighted) AUC, ties one half, and its DeLong influence values.

    >>> r = auc_influence(np.array([0.1, 0.4, 0.4, 0.8]), np.array([0, 0, 1, 1]))
    >>> r.value, r.psi.round(3).tolist()
    (0.875, [0.25, -0.25, -0.25, 0.25])
    """
    p = as_numpy(preds).astype(np.float32, copy=False).reshape(-1)
    y = as_numpy(target).reshape(-1)
    w = None if weights is None else as_numpy(weights).reshape(-1)
    if p.size == 0:
        return AUCInfluence(math.nan, np.zeros(0), np.zeros(0, dtype=np.int8))
    return _exact_influence(p, y, w)


def equal_width_bins(preds: torch.Tensor, bins: int) -> torch.Tensor:
    """Equal-width bin of each probability, as the metric's ``binned_histogram`` counts:
    ``clamp(floor(p * bins), 0, bins - 1)`` (a test checks the two agree).

    >>> equal_width_bins(torch.tensor([0.0, 0.5, 1.0]), 2).tolist()
    [0, 1, 1]
    """
    return torch.clamp(preds * bins, 0, bins - 1).to(torch.int64)


def binned_auc_influence(
    preds: object,
    target: object,
    *,
    bins: int = 0,
    thresholds: int = 0,
    weights: object | None = None,
) -> AUCInfluence:
    """Binned AUC and its DeLong influence values, the buckets being the tie groups.

    ``bins``: equal-width bins (pairs in one bin count one half), as
    ``AUC(bins=...)``; ``thresholds``: torchmetrics' threshold points, bucketized by the
    metric's own :func:`~rankboard.service.metrics.functional.auc.bin_indices`, as
    ``AUC(thresholds=...)`` (pairs in one bucket count one half, except in the last
    bucket, where they count 0).

    >>> r = binned_auc_influence(np.array([0.1, 0.45, 0.4, 0.8]), np.array([0, 0, 1, 1]), bins=10)
    >>> r.value
    0.875
    """
    if (bins > 0) == (thresholds > 0):
        raise ValueError("binned_auc_influence: give bins or thresholds (one of them > 0)")
    p = torch.as_tensor(as_numpy(preds)).reshape(-1).to(torch.float32)
    y = as_numpy(target).reshape(-1)
    w = None if weights is None else as_numpy(weights).reshape(-1)
    if p.numel() == 0:
        return AUCInfluence(math.nan, np.zeros(0), np.zeros(0, dtype=np.int8))
    if bins:
        idx = equal_width_bins(p, bins).numpy()
        return _influence_from_ties(idx.astype(np.intp), int(bins), y, w)
    from rankboard.service.metrics.functional.histogram import bin_indices

    idx = bin_indices(p, thresholds).numpy()
    return _influence_from_ties(idx.astype(np.intp), int(thresholds), y, w, untied_last=True)


def delong_variance(
    preds: object, target: object, weights: object | None = None, *, clusters: object | None = None
) -> float:
    """DeLong variance of the exact AUC (clustered by ``clusters``: Obuchowski 1997).

    >>> p = np.array([0.1, 0.4, 0.35, 0.8, 0.3, 0.7])
    >>> y = np.array([0, 0, 1, 1, 0, 1])
    >>> round(delong_variance(p, y), 6)
    0.024691
    """
    r = auc_influence(preds, target, weights)
    c = None if clusters is None else as_numpy(clusters)
    return influence_variance(r.psi, strata=r.strata, clusters=c)[0]


def paired_delong(
    preds_a: object,
    preds_b: object,
    target: object,
    weights: object | None = None,
    *,
    clusters: object | None = None,
) -> tuple[float, float, float]:
    """Paired DeLong test of two scores of the same samples: ``(ΔAUC = B - A, SE, p)``.

    The p-value is two-sided (normal), from ``scipy.stats.norm``.

    >>> y = np.array([0, 0, 1, 1, 0, 1, 0, 1])
    >>> a = np.array([0.1, 0.4, 0.35, 0.8, 0.3, 0.7, 0.5, 0.6])
    >>> b = np.array([0.1, 0.3, 0.45, 0.8, 0.2, 0.7, 0.4, 0.6])
    >>> d, se, p = paired_delong(a, b, y)
    >>> round(d, 4), round(se, 4), round(p, 3)
    (0.125, 0.1443, 0.386)
    """
    ra = auc_influence(preds_a, target, weights)
    rb = auc_influence(preds_b, target, weights)
    c = None if clusters is None else as_numpy(clusters)
    var, _ = influence_variance(rb.psi - ra.psi, strata=ra.strata, clusters=c)
    delta = rb.value - ra.value
    se = math.sqrt(var)
    p = float(2 * norm.sf(abs(delta) / se)) if se > 0 else (0.0 if delta else 1.0)
    return delta, se, p


def auc_interval(
    preds: object,
    target: object,
    weights: object | None = None,
    *,
    clusters: object | None = None,
    alpha: float = 0.05,
) -> tuple[float, float, float]:
    """``(AUC, low, high)``: the exact AUC and its ``1 - alpha`` DeLong interval.

    >>> rng = np.random.default_rng(0)
    >>> y = rng.integers(0, 2, 2000)
    >>> p = rng.normal(y * 1.0, 1.0)
    >>> auc, lo, hi = auc_interval(p, y)
    >>> lo < auc < hi, round(hi - lo, 3)
    (True, 0.041)
    """
    a = validate_alpha(alpha)
    r = auc_influence(preds, target, weights)
    c = None if clusters is None else as_numpy(clusters)
    var, _ = influence_variance(r.psi, strata=r.strata, clusters=c)
    half = float(norm.ppf(1 - a / 2)) * math.sqrt(var)
    return r.value, r.value - half, r.value + half


class MulticlassInfluence(NamedTuple):
    """Averaged one-vs-rest AUC, per-sample influence values and the class labels."""

    value: float
    psi: np.ndarray
    labels: np.ndarray


def multiclass_auc_influence(
    preds: object,
    target: object,
    *,
    average: str = "macro",
    bins: int = 0,
    thresholds: int = 0,
) -> MulticlassInfluence:
    """One-vs-rest AUC averaged over classes, and its DeLong influence values.

    Per class ``k`` the binary DeLong influence ``ψ_k`` of "class k vs the rest" (exact,
    or on the metric's buckets); ``macro``: ``ψ = mean_k ψ_k`` over the classes whose AUC
    is defined, ``weighted``: ``Σ_k s_k ψ_k / Σ_k s_k`` with ``s_k`` the class supports.
    The variance is then that of independent samples (each sample is one draw of
    (class, scores); no strata, since a class's negatives mix the other classes).

    >>> p = np.array([[0.7, 0.2, 0.1], [0.2, 0.5, 0.3], [0.1, 0.3, 0.6], [0.4, 0.4, 0.2]])
    >>> r = multiclass_auc_influence(p, np.array([0, 1, 2, 1]))
    >>> r.value
    1.0
    """
    if average not in ("macro", "weighted"):
        raise ValueError(f"average must be 'macro' or 'weighted', got {average!r}")
    p = as_numpy(preds)
    y = as_numpy(target).astype(np.int64).reshape(-1)
    n = y.size
    c = p.shape[1] if p.ndim == 2 else 0
    if n == 0 or c == 0:
        return MulticlassInfluence(math.nan, np.zeros(n), y)
    support = np.bincount(y, minlength=c).astype(np.float64)
    values, psis, weights = [], [], []
    for k in range(c):
        yk = (y == k).astype(np.float32)
        col = np.ascontiguousarray(p[:, k], dtype=np.float32)
        if bins or thresholds:
            r = binned_auc_influence(col, yk, bins=bins, thresholds=thresholds)
        else:
            r = auc_influence(col, yk)
        if math.isnan(r.value):
            continue
        values.append(r.value)
        psis.append(r.psi)
        weights.append(1.0 if average == "macro" else support[k])
    if not values:
        return MulticlassInfluence(math.nan, np.zeros(n), y)
    w = np.asarray(weights) / np.sum(weights)
    value = float(np.dot(w, values)) if average == "weighted" else float(np.mean(values))
    psi = np.zeros(n)
    for wk, pk in zip(w, psis, strict=True):
        psi += wk * pk
    return MulticlassInfluence(value, psi, y)
