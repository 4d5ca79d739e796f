"""Poisson bootstrap with weights from a hash of (unit, replicate) (Chamandy et al., 2012).

Each unit (a cluster, or a sample) gets, in replicate ``b``, a Poisson(1) count drawn by
inverting the Poisson CDF at a uniform number made from ``splitmix64(unit id, seed, b)``.
The count depends on nothing but the unit id and the replicate, so two arms that contain
the same units (the same sample ids, or the same users) get the same counts: the
replicates of a delta ``B - A`` are paired automatically. Vectorized over units in numpy;
the metric itself is recomputed on every replicate (a fresh copy: ``copy.deepcopy`` then
``reset``), so any metric works. ``B = 200`` by default.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from scipy.stats import poisson

__all__ = [
    "DEFAULT_REPLICATES",
    "bootstrap_replicates",
    "metric_on",
    "poisson_counts",
    "poisson_counts_block",
    "splitmix64",
]

DEFAULT_REPLICATES = 200

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
# P(K <= k) for K ~ Poisson(1), k = 0..19 (the tail beyond is below 1e-18)
_CDF = poisson.cdf(np.arange(20), 1.0)


def splitmix64(x: np.ndarray) -> np.ndarray:
    """The splitmix64 finalizer of uint64 values (wrapping arithmetic), vectorized.

    >>> int(splitmix64(np.array([0], dtype=np.uint64))[0])
    16294208416658607535
    """
    with np.errstate(over="ignore"):
        z = np.asarray(x, dtype=np.uint64) + _GOLDEN
        z = (z ^ (z >> np.uint64(30))) * _M1
        z = (z ^ (z >> np.uint64(27))) * _M2
        return z ^ (z >> np.uint64(31))


def poisson_counts(units: np.ndarray, replicate: int, seed: int = 0) -> np.ndarray:
    """Poisson(1) counts (int64) of ``units`` (int64 ids) in replicate ``replicate``.

    >>> u = np.arange(100_000)
    >>> c = poisson_counts(u, 3)
    >>> round(float(c.mean()), 2), round(float(c.var()), 2), bool((c == poisson_counts(u, 3)).all())
    (1.0, 1.0, True)
    """
    return poisson_counts_block(units, replicate, 1, seed)[0]


def poisson_counts_block(units: np.ndarray, first: int, count: int, seed: int = 0) -> np.ndarray:
    """Counts of replicates ``first .. first + count - 1`` at once, ``(count, len(units))``;
    row ``b`` equals ``poisson_counts(units, first + b, seed)``.

    >>> u = np.arange(50)
    >>> bool((poisson_counts_block(u, 4, 3)[2] == poisson_counts(u, 6)).all())
    True
    """
    reps = np.arange(first, first + count, dtype=np.uint64) & np.uint64(0xFFFFFFFF)
    salt = splitmix64((np.uint64(seed & 0xFFFFFFFF) << np.uint64(32)) | reps)
    ids = np.asarray(units).astype(np.int64).view(np.uint64)
    h = splitmix64(ids[None, :] ^ salt[:, None])
    u = (h >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))
    return np.searchsorted(_CDF, u, side="right").astype(np.int64)


def bootstrap_replicates(
    statistic: Callable[[np.ndarray], float],
    units: np.ndarray,
    *,
    replicates: int = DEFAULT_REPLICATES,
    seed: int = 0,
) -> np.ndarray:
    """``statistic(counts)`` for each replicate, ``counts`` being per-sample Poisson counts
    of the samples' ``units``. Returns a float64 ``(replicates,)`` array.

    >>> x = np.arange(10.0)
    >>> reps = bootstrap_replicates(lambda c: float((c * x).sum() / c.sum()), np.arange(10))
    >>> reps.shape, round(float(reps.std(ddof=1)), 1)  # SE of a mean of 0..9: about 0.96
    ((200,), 1.0)
    """
    out = np.empty(replicates, dtype=np.float64)
    for b in range(replicates):
        out[b] = statistic(poisson_counts(units, b, seed))
    return out


def metric_on(metric: Any, cols: Any, rows: np.ndarray | None, key_name: str | None) -> float:
    """The value of a fresh copy of ``metric`` updated with the ``rows`` of ``cols``
    (all rows for None, repeated rows allowed)."""
    m = copy.deepcopy(metric)
    m.reset()

    def take(a: np.ndarray | None) -> torch.Tensor | None:
        if a is None:
            return None
        return torch.from_numpy(np.ascontiguousarray(a if rows is None else a[rows]))

    kw: dict[str, Any] = {}
    if cols.weights is not None and getattr(m, "supports_weights", False):
        kw["weights"] = take(cols.weights)
    if key_name is not None:
        kw["grouping_key"] = take(cols.keys[key_name])
    preds = take(cols.preds)
    if preds is None or preds.shape[0] == 0:
        return math.nan
    m.update(preds, take(cols.target), **kw)
    return float(m.compute())
