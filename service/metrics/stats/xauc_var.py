"""XAUC as a U-statistic: per-sample concordance shares and their variance, O(n log n).

XAUC is ``θ̂ = C / (n (n - 1) / 2)`` with ``C`` the pairs whose targets and predictions
are ordered alike (ties in either count as disagreement). It is a U-statistic of order 2,
so ``Var(θ̂) ≈ 4 ζ₁ / n`` (Hoeffding), ``ζ₁`` the variance of ``h₁(x) = P(x concordant
with a random other sample)``, estimated by ``V_i`` = the share of the ``n - 1`` pairs
involving sample ``i`` that are concordant. The influence values are
``ψ_i = 2 (V_i - θ̂)`` (``mean(V) = θ̂`` exactly), so the independent-sample variance of
:mod:`.variance` is ``4 · Var(V) / n`` (``Var`` with ``n - 1``).

Every sample's count of concordant partners comes without enumerating pairs: sorted by
(target ascending, prediction descending), sample ``x`` is concordant with the earlier
samples of smaller prediction rank and the later samples of larger rank. A radix
refinement over the bits of the ranks (as the metric's exact count) adds, level by level,
for a 1 bit the 0 bits before it in its segment and for a 0 bit the 1 bits after it.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from rankboard.service.metrics.functional._numpy_kernels import _dense_rank, float_key_np
from rankboard.service.metrics.stats.columns import as_numpy

__all__ = ["XAUCInfluence", "concordant_partners", "xauc_influence", "xauc_variance"]


class XAUCInfluence(NamedTuple):
    """XAUC, per-sample influence values ``2 (V_i - θ)`` and concordant partner counts."""

    value: float
    psi: np.ndarray
    partners: np.ndarray


def _partners_in_sequence(r: np.ndarray) -> np.ndarray:
    """For each position ``x``: earlier positions with smaller ``r`` plus later positions
    with larger ``r`` (int64, in sequence order)."""
    n = r.size
    acc = np.zeros(n, dtype=np.int64)
    if n < 2:
        return acc
    idx = np.arange(n, dtype=np.int64)
    orig = idx.copy()  # sequence position of the element now at each slot
    start = np.zeros(n, dtype=np.int64)
    length = np.full(n, n, dtype=np.int64)
    cur = r.astype(np.int64)
    czp = np.zeros(n + 1, dtype=np.int64)
    top = int(cur.max()).bit_length()
    for b in range(top - 1, -1, -1):
        bit = (cur >> b) & 1
        zero = 1 - bit
        np.cumsum(zero, out=czp[1:])
        zs = czp[start]
        zb = czp[:-1] - zs  # zeros before, within the segment
        zseg = czp[start + length] - zs
        ob = (idx - start) - zb  # ones before, within the segment
        ones_after = (length - zseg) - ob - bit
        acc += np.where(bit == 1, zb, ones_after)
        if b == 0:
            break
        ones = bit.astype(bool)
        pos = np.where(ones, start + zseg + ob, start + zb)
        new_start = np.where(ones, start + zseg, start)
        new_len = np.where(ones, length - zseg, zseg)
        nxt = np.empty_like(cur)
        nxt[pos] = cur
        cur = nxt
        for name in ("acc", "orig"):
            arr = acc if name == "acc" else orig
            moved = np.empty_like(arr)
            moved[pos] = arr
            if name == "acc":
                acc = moved
            else:
                orig = moved
        start = np.empty_like(start)
        start[pos] = new_start
        length = np.empty_like(length)
        length[pos] = new_len
    out = np.empty(n, dtype=np.int64)
    out[orig] = acc
    return out


def concordant_partners(preds: object, target: object) -> np.ndarray:
    """Per sample, how many other samples are concordant with it (int64).

    >>> concordant_partners(np.array([0.1, 0.2, 0.3]), np.array([1.0, 3.0, 2.0])).tolist()
    [2, 1, 1]
    """
    p = as_numpy(preds).astype(np.float32, copy=False).reshape(-1)
    t = as_numpy(target).astype(np.float32, copy=False).reshape(-1)
    n = p.size
    if n < 2:
        return np.zeros(n, dtype=np.int64)
    prank, pm = _dense_rank(float_key_np(p))
    trank, _ = _dense_rank(float_key_np(t))
    rbits = max(1, int(pm - 1).bit_length())
    desc = (pm - 1) - prank  # larger prediction first within equal targets
    order = np.argsort((trank << rbits) | desc, kind="stable")
    seq = _partners_in_sequence(prank[order])
    out = np.empty(n, dtype=np.int64)
    out[order] = seq
    return out


def xauc_influence(preds: object, target: object) -> XAUCInfluence:
    """Exact XAUC and its U-statistic influence values.

    >>> r = xauc_influence(np.array([0.1, 0.2, 0.3, 0.3]), np.array([1.0, 3.0, 2.0, 5.0]))
    >>> r.value, r.partners.tolist()
    (0.6666666666666666, [3, 2, 1, 2])
    """
    k = concordant_partners(preds, target)
    n = k.size
    if n < 2:
        return XAUCInfluence(math.nan, np.zeros(n), k)
    conc = int(k.sum()) // 2
    value = float(conc) / (n * (n - 1) // 2)
    psi = 2.0 * (k / (n - 1) - value)
    return XAUCInfluence(value, psi, k)


def xauc_variance(preds: object, target: object) -> float:
    """``4 · Var(V) / n``: the U-statistic variance of the exact XAUC (NaN below 3 samples).

    >>> round(xauc_variance(np.array([0.1, 0.2, 0.3, 0.3]), np.array([1.0, 3.0, 2.0, 5.0])), 6)
    0.074074
    """
    r = xauc_influence(preds, target)
    n = r.psi.size
    if n < 3:
        return math.nan
    return float(np.sum((r.psi - r.psi.mean()) ** 2) / (n * (n - 1)))
