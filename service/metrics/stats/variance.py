"""Variance of a mean of influence values: independent, stratified, or clustered.

An estimate ``θ̂`` with influence values ``ψ_i`` (``θ̂ - θ ≈ mean(ψ)`` over all ``n``
samples) has ``Var(θ̂) ≈ Var(mean ψ)``. :func:`influence_variance` estimates it

* independent samples, strata ``s`` (e.g. the label class of AUC):
  ``Σ_s n_s / (n_s - 1) · Σ_{i∈s} (ψ_i - ψ̄_s)² / n²`` — for AUC with DeLong's placement
  values this is exactly ``S10/n1 + S01/n0``;
* clusters ``k`` (e.g. users), Obuchowski (1997): with ``S_ks`` the sum of ``ψ`` over
  cluster ``k`` and stratum ``s``, ``I_s`` the clusters with samples in stratum ``s``
  and ``I`` all clusters,
  ``[Σ_s I_s/(I_s-1) Σ_k S_ks² + I/(I-1) Σ_k Σ_{s≠s'} S_ks S_ks'] / n²``; without
  strata this is ``K/(K-1) · Σ_k (S_k - S̄)² / n²``.

``counted`` (optional boolean mask) drops samples that are not part of the estimate
(e.g. groups with a single class in grouped AUC) from the unit counts; ``n`` stays the
length of ``ψ``, by which the influence values are scaled.
"""

from __future__ import annotations

import numpy as np

from rankboard.service.metrics.functional._numpy_kernels import dense_ids_np

__all__ = ["compact_codes", "dense_codes", "influence_variance"]


def dense_codes(keys: np.ndarray) -> tuple[np.ndarray, int]:
    """Codes ``0..m-1`` (intp) ordered like ``keys``, with gaps allowed, and the bound ``m``.

    >>> codes, m = dense_codes(np.array([10, 12, 10]))
    >>> codes.tolist(), m
    ([0, 2, 0], 3)
    """
    ids, bound = dense_ids_np(np.ascontiguousarray(keys, dtype=np.int64))
    return ids.astype(np.intp), int(bound)


def compact_codes(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(codes, values)``: codes ``0..k-1`` of the ``k`` distinct ``keys`` (ascending) and
    those values, without ``np.unique`` (which holds the GIL for a whole 10M-key pass).

    >>> codes, values = compact_codes(np.array([10, 12, 10, 2**60]))
    >>> codes.tolist(), values.tolist()
    ([0, 1, 0, 2], [10, 12, 1152921504606846976])
    """
    keys = np.ascontiguousarray(keys, dtype=np.int64)
    codes, bound = dense_codes(keys)
    present = np.bincount(codes, minlength=bound) > 0
    values = np.zeros(bound, dtype=np.int64)
    values[codes] = keys
    lookup = np.cumsum(present.astype(np.int64)) - 1
    return lookup[codes].astype(np.intp), values[present]


def influence_variance(
    psi: np.ndarray,
    *,
    strata: np.ndarray | None = None,
    clusters: np.ndarray | None = None,
    counted: np.ndarray | None = None,
) -> tuple[float, int]:
    """``(variance of mean(psi), independent units)``; NaN variance under two units.

    ``strata``: small non-negative ints (e.g. labels 0/1); ``clusters``: int64 ids.

    >>> psi = np.array([1.0, -1.0, 2.0, -2.0])
    >>> v, units = influence_variance(psi)
    >>> round(v, 6), units  # sample variance / n: (10 / 3) / 4
    (0.833333, 4)
    >>> influence_variance(psi, clusters=np.array([1, 1, 2, 2]))  # cluster sums are 0
    (0.0, 2)
    """
    psi = np.asarray(psi, dtype=np.float64)
    n = psi.size
    if counted is not None:
        keep = np.asarray(counted, dtype=bool)
        psi = psi[keep]
        strata = None if strata is None else np.asarray(strata)[keep]
        clusters = None if clusters is None else np.asarray(clusters)[keep]
    if strata is None:
        s = np.zeros(psi.size, dtype=np.intp)
        num_s = 1
    else:
        s = np.asarray(strata).astype(np.intp)
        num_s = int(s.max()) + 1 if s.size else 1
    if clusters is None:
        cnt = np.bincount(s, minlength=num_s).astype(np.float64)
        tot = np.bincount(s, weights=psi, minlength=num_s)
        sq = np.bincount(s, weights=psi * psi, minlength=num_s)
        present = cnt > 0
        if np.any(cnt[present] < 2):
            return float("nan"), int(psi.size)
        mean = np.divide(tot, cnt, out=np.zeros_like(tot), where=present)
        ss = sq - tot * mean  # Σ (ψ - ψ̄_s)² per stratum
        num = np.where(present, cnt / np.where(cnt > 1, cnt - 1, 1) * ss, 0.0).sum()
        return float(max(num, 0.0) / (n * n)), int(psi.size)
    cid, bound = dense_codes(clusters)
    cell = cid * num_s + s
    size = bound * num_s
    S = np.bincount(cell, weights=psi, minlength=size).reshape(bound, num_s)
    have = (np.bincount(cell, minlength=size) > 0).reshape(bound, num_s)
    in_any = have.any(axis=1)
    S = S[in_any]
    have = have[in_any]
    k_all = int(S.shape[0])
    k_s = have.sum(axis=0)
    if k_all < 2 or np.any(k_s[k_s > 0] < 2):
        return float("nan"), k_all
    means = S.sum(axis=0) / np.maximum(k_s, 1)
    S = np.where(have, S - means, 0.0)
    c_all = k_all / (k_all - 1)
    c_s = np.where(k_s > 1, k_s / np.maximum(k_s - 1, 1), 0.0)
    within = (S * S).sum(axis=0)
    total = S.sum(axis=1)
    num = float(((c_s - c_all) * within).sum() + c_all * (total * total).sum())
    return max(num, 0.0) / (n * n), k_all
