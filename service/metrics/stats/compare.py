"""Intervals and arm comparisons: :func:`interval` and :func:`compare_arms`.

:func:`interval` gives an :class:`~.arms.ArmStats`' fixed-horizon or sequential interval
and :func:`compare_arms` the delta of two arms with its interval, p-value and verdict.
:func:`arm_stats` and :class:`ArmStats` (one arm's statistics, :mod:`.arms`) are
importable from here too.

Pairing (:func:`compare_arms`): when both arms carry sample ids, each id once, and the
two id sets are identical, the delta's variance is that of the paired differences of the
influence values (bootstrap: of the paired replicate differences), clustered by the
base arm's clusters; for AUC-type metrics the labels of every id must agree too.
Otherwise the arms are independent (``Var_A + Var_B``) and ``Delta.pairing`` says why.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.stats import norm

from rankboard.service.metrics.stats.arms import ArmStats, arm_stats, finite
from rankboard.service.metrics.stats.sequential import (
    always_valid_p_value,
    cs_half_width,
    validate_alpha,
    validate_horizon,
)
from rankboard.service.metrics.stats.variance import influence_variance

__all__ = [
    "ArmStats",
    "Delta",
    "arm_stats",
    "compare_arms",
    "higher_is_better",
    "interval",
]

_LOWER_IS_BETTER = ("NormalizedEntropy", "MeanSquaredError", "MeanAbsoluteError")


@dataclass(frozen=True)
class Delta:
    """Arm minus base for one metric: estimate, SE, interval, p-value and verdict.

    ``verdict`` is ``"better"`` / ``"worse"`` when the interval excludes 0 (by the
    metric's direction), else ``"inconclusive"``. ``pairing`` explains ``paired``.
    """

    delta: float | None
    se: float | None
    low: float | None
    high: float | None
    p_value: float | None
    verdict: str
    method: str
    paired: bool
    paired_samples: int
    pairing: str


def higher_is_better(metric: Any) -> bool:
    """Direction of a metric: lower is better for NE, MSE and MAE, higher for the rest.

    >>> from rankboard.service.metrics import AUC, NormalizedEntropy
    >>> higher_is_better(AUC(thresholds=0)), higher_is_better(NormalizedEntropy())
    (True, False)
    """
    inner = getattr(metric, "metric", None)  # a train wrapper: its metric's direction
    if (
        inner is not None
        and hasattr(inner, "compute")
        and type(metric).__name__.startswith("Train")
    ):
        metric = inner
    if type(metric).__name__ in _LOWER_IS_BETTER:
        return False
    hib = getattr(metric, "higher_is_better", True)
    return True if hib is None else bool(hib)


def _z(alpha: float) -> float:
    return float(norm.ppf(1.0 - alpha / 2.0))


def _half_width(
    se: float, units: int, alpha: float, sequential: bool, horizon: int | None
) -> float:
    if sequential:
        return cs_half_width(se, max(units, 1), alpha, validate_horizon(horizon))
    return _z(alpha) * se


def interval(
    s: ArmStats, *, alpha: float = 0.05, sequential: bool = False, horizon: int | None = None
) -> tuple[float, float] | None:
    """``(low, high)``: fixed-horizon normal interval, or with ``sequential`` the
    asymptotic confidence sequence at ``s.n_units`` units; None without a standard error.

    >>> s = ArmStats("auc", 0.75, 0.01, "delong", None, 1000)
    >>> [round(x, 4) for x in interval(s)]
    [0.7304, 0.7696]
    >>> [round(x, 4) for x in interval(s, sequential=True, horizon=1000)]
    [0.7196, 0.7804]
    """
    a = validate_alpha(alpha)
    if sequential:
        validate_horizon(horizon)
    if s.se is None or not finite(s.value) or not finite(s.se):
        return None
    hw = _half_width(s.se, s.n_units, a, sequential, horizon)
    return s.value - hw, s.value + hw


def _sorted_ids(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray, bool]:
    """``(order, sorted ids, each id once)``. Ids already ascending cost one pass; other
    ids a packed sort of ``(id - min, index)`` when they fit in one uint64 (several times
    faster than an argsort), else an argsort."""
    n = ids.size
    if n < 2:
        return np.arange(n), ids, True
    if bool(np.all(ids[1:] > ids[:-1])):
        return np.arange(n), ids, True
    lo, hi = int(ids.min()), int(ids.max())
    sh = max(1, int(n - 1).bit_length())
    if (hi - lo).bit_length() + sh <= 64:
        packed = (ids - lo).astype(np.uint64) << np.uint64(sh)
        packed |= np.arange(n, dtype=np.uint64)
        packed.sort()
        order = (packed & np.uint64((1 << sh) - 1)).astype(np.intp)
        sid = (packed >> np.uint64(sh)).astype(np.int64) + lo
    else:
        order = np.argsort(ids, kind="stable")
        sid = ids[order]
    return order, sid, bool(np.all(sid[1:] != sid[:-1]))


def _pairing(base: ArmStats, arm: ArmStats) -> tuple[np.ndarray | None, np.ndarray | None, str]:
    """``(order_base, order_arm, reason)``: aligned orders when pairable, else a reason."""
    a, b = base.sample_ids, arm.sample_ids
    if a is None or b is None:
        return None, None, "unpaired: no sample ids"
    oa, sa, ua = _sorted_ids(a)
    ob, sb, ub = _sorted_ids(b)
    if not ua or not ub:
        which = "baseline" if not ua else "arm"
        return None, None, f"unpaired: sample ids repeat in the {which}"
    if sa.size == sb.size and np.array_equal(sa, sb):
        return oa, ob, ""
    common = np.intersect1d(sa, sb, assume_unique=True).size
    union = sa.size + sb.size - common
    share = 100.0 * (union - common) / max(union, 1)
    return None, None, f"unpaired: {share:.1f}% of sample ids have no partner"


def _verdict(low: float, high: float, hib: bool) -> str:
    if low > 0:
        return "better" if hib else "worse"
    if high < 0:
        return "worse" if hib else "better"
    return "inconclusive"


def _none_delta(method: str, reason: str) -> Delta:
    return Delta(None, None, None, None, None, "inconclusive", method, False, 0, reason)


def compare_arms(
    base: ArmStats,
    arm: ArmStats,
    *,
    alpha: float = 0.05,
    sequential: bool = False,
    horizon: int | None = None,
    higher_is_better: bool = True,
) -> Delta:
    """``arm - base`` with its SE, interval, two-sided p-value and verdict.

    Paired when both arms carry identical sets of unique sample ids (see the module
    docstring), else independent. ``sequential``: the interval is the asymptotic
    confidence sequence and the p-value always-valid (``horizon`` units planned).

    >>> a = ArmStats("auc", 0.70, 0.004, "delong", None, 10_000)
    >>> b = ArmStats("auc", 0.72, 0.004, "delong", None, 10_000)
    >>> d = compare_arms(a, b)
    >>> round(d.delta, 3), round(d.se, 5), round(d.p_value, 5), d.verdict, d.pairing
    (0.02, 0.00566, 0.00041, 'better', 'unpaired: no sample ids')
    """
    a = validate_alpha(alpha)
    if sequential:
        validate_horizon(horizon)
    method = arm.method if arm.method == base.method else f"{base.method}/{arm.method}"
    if not (finite(base.value) and finite(arm.value)):
        return _none_delta(method, "no value in one of the arms")
    delta = arm.value - base.value
    oa, ob, reason = _pairing(base, arm)
    paired = False
    se: float | None = None
    units = 0
    n_paired = 0
    if oa is not None and ob is not None:
        se, units, reason = _paired_se(base, arm, oa, ob)
        paired = se is not None
        n_paired = oa.size if paired else 0
    if not paired:
        if base.se is None or arm.se is None:
            return Delta(
                delta,
                None,
                None,
                None,
                None,
                "inconclusive",
                method,
                False,
                0,
                reason or "unpaired",
            )
        se = math.sqrt(base.se**2 + arm.se**2)
        units = min(base.n_units, arm.n_units)
    else:
        reason = f"paired on {n_paired} sample ids"
    assert se is not None
    hw = _half_width(se, units, a, sequential, horizon)
    low, high = delta - hw, delta + hw
    if sequential:
        p = always_valid_p_value(delta, se, max(units, 1), a, validate_horizon(horizon))
    elif se > 0:
        p = float(2.0 * norm.sf(abs(delta) / se))
    else:
        p = 0.0 if delta != 0 else 1.0
    return Delta(
        delta,
        se,
        low,
        high,
        p,
        _verdict(low, high, higher_is_better),
        method,
        paired,
        n_paired,
        reason,
    )


def _paired_se(
    base: ArmStats, arm: ArmStats, oa: np.ndarray, ob: np.ndarray
) -> tuple[float | None, int, str]:
    """SE of the paired delta, its units, and a reason when it cannot be paired."""
    if base.replicates is not None and arm.replicates is not None:
        if base.bootstrap_seed != arm.bootstrap_seed or base.cluster != arm.cluster:
            return None, 0, "unpaired: bootstrap seeds or clusters differ"
        ra, rb = base.replicates, arm.replicates
        if ra.size != rb.size:
            return None, 0, "unpaired: different numbers of bootstrap replicates"
        d = rb - ra
        ok = np.isfinite(d)
        if ok.sum() < 2:
            return None, 0, "unpaired: too few finite bootstrap replicates"
        return float(np.std(d[ok], ddof=1)), min(base.n_units, arm.n_units), ""
    if base.psi is None or arm.psi is None:
        return None, 0, "unpaired: no influence values"
    if (
        base.labels is not None
        and arm.labels is not None
        and not np.array_equal(base.labels[oa], arm.labels[ob])
    ):
        bad = int(np.count_nonzero(base.labels[oa] != arm.labels[ob]))
        return None, 0, f"unpaired: labels differ for {bad} sample ids"
    d = arm.psi[ob] - base.psi[oa]
    clusters = base.clusters if base.clusters is not None else arm.clusters
    clusters_src = oa if base.clusters is not None else ob
    c = None if clusters is None else clusters[clusters_src]
    counted = None
    if base.counted is not None or arm.counted is not None:
        ca = np.ones(oa.size, bool) if base.counted is None else base.counted[oa]
        cb = np.ones(ob.size, bool) if arm.counted is None else arm.counted[ob]
        counted = ca | cb
    strata = base.strata[oa] if base.strata is not None else None
    var, units = influence_variance(d, strata=strata, clusters=c, counted=counted)
    if not finite(var):
        return None, 0, "unpaired: fewer than two units"
    return math.sqrt(var), units, ""
