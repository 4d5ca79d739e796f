"""Arm statistics, intervals and arm comparisons: the public A/B API.

:func:`arm_stats` turns one metric and one arm's :class:`Columns` into an
:class:`ArmStats` (value, standard error, method, the independent units, and what pairing
needs); :func:`interval` gives its fixed-horizon or sequential interval and
:func:`compare_arms` the delta of two arms with its interval, p-value and verdict.

Methods by metric (``ArmStats.method``):

* ``AUC`` exact or binned: ``"delong"`` (``"delong-clustered"`` with a cluster column);
* ``XAUC`` exact: ``"u-statistic"`` (``"u-statistic-clustered"``);
* ``GroupedAUC``, exact ``GroupedXAUC``: ``"delta-over-groups"``; clustered at least by the
  metric's own grouping key (``cluster`` names it), or by a coarser cluster column;
* ``NormalizedEntropy``, ``MeanSquaredError``, ``MeanAbsoluteError``, ``Accuracy``:
  ``"delta"`` (``"delta-clustered"``);
* ``MulticlassAUC``: ``"delong"``: the one-vs-rest DeLong influence values averaged like
  the classes (macro or support-weighted), independent samples (a closed form, so no
  bootstrap: at 100k samples the bootstrap took 15 s);
* ``RecallAtK``: ``"poisson-bootstrap"`` of hits over relevant items, summed per unit
  once (a replicate is two dot products);
* anything else (sampled or in-batch XAUC, ...): ``"poisson-bootstrap"`` over clusters,
  sample ids or samples, recomputing a fresh copy of the metric per replicate
  (``B = 200``, fewer past ``MAX_BOOTSTRAP_ROWS`` replicate rows, at least 30);
* decayed train metrics: ``"none"`` (no interval: they are smoothed, not estimates).

Pairing (:func:`compare_arms`): when both arms carry sample ids, each id once, and the
two id sets are identical, the delta's variance is that of the paired differences of the
influence values (bootstrap: of the paired replicate differences), clustered by the
base arm's clusters; for AUC-type metrics the labels of every id must agree too.
Otherwise the arms are independent (``Var_A + Var_B``) and ``Delta.pairing`` says why.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.stats import norm

from rankboard.service.metrics.stats.bootstrap import (
    DEFAULT_REPLICATES,
    metric_on,
    poisson_counts,
    poisson_counts_block,
)
from rankboard.service.metrics.stats.columns import Columns, StatsInputError
from rankboard.service.metrics.stats.delong import (
    auc_influence,
    binned_auc_influence,
    multiclass_auc_influence,
)
from rankboard.service.metrics.stats.grouped import grouped_auc_influence, grouped_xauc_influence
from rankboard.service.metrics.stats.ratio import (
    accuracy_influence,
    mean_error_influence,
    ne_influence,
    recall_terms,
)
from rankboard.service.metrics.stats.sequential import (
    always_valid_p_value,
    cs_half_width,
    validate_alpha,
    validate_horizon,
)
from rankboard.service.metrics.stats.variance import compact_codes, influence_variance
from rankboard.service.metrics.stats.xauc_var import xauc_influence

__all__ = [
    "ArmStats",
    "Delta",
    "arm_stats",
    "compare_arms",
    "higher_is_better",
    "interval",
]

log = logging.getLogger(__name__)

_LOWER_IS_BETTER = ("NormalizedEntropy", "MeanSquaredError", "MeanAbsoluteError")

# The generic bootstrap recomputes the metric on every replicate: past this many rows in
# all (replicates x samples) it runs fewer replicates, never fewer than MIN_REPLICATES.
MAX_BOOTSTRAP_ROWS = 50_000_000
MIN_REPLICATES = 30
_BLOCK_ELEMENTS = 4_000_000  # Poisson counts drawn at once (replicates x units)


@dataclass(frozen=True)
class ArmStats:
    """One metric of one arm, ready for intervals and comparisons.

    ``value`` is the metric's own point value; ``se`` its standard error (None when it
    cannot be estimated: fewer than two units, no interval for the metric, NaN value);
    ``method`` how (see the module docstring); ``cluster`` the key column whose values
    are the independent units (None: samples); ``n_units`` how many units. The other
    fields are what pairing needs: per-sample influence values with their strata,
    clusters and ``counted`` mask, or bootstrap replicates; and the sample ids.
    """

    metric: str
    value: float
    se: float | None
    method: str
    cluster: str | None
    n_units: int
    n_samples: int = 0
    psi: np.ndarray | None = field(default=None, repr=False)
    strata: np.ndarray | None = field(default=None, repr=False)
    labels: np.ndarray | None = field(default=None, repr=False)
    clusters: np.ndarray | None = field(default=None, repr=False)
    counted: np.ndarray | None = field(default=None, repr=False)
    sample_ids: np.ndarray | None = field(default=None, repr=False)
    replicates: np.ndarray | None = field(default=None, repr=False)
    bootstrap_seed: int | None = field(default=None, repr=False)


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


def _finite(x: float) -> bool:
    return x is not None and math.isfinite(x)


def _is_train(metric: Any) -> bool:
    return type(metric).__name__ in ("DecayAUC", "TrainMetricWrapper")


def _clusters_for(cols: Columns, cluster: str | None) -> np.ndarray | None:
    return None if cluster is None else cols.key(cluster)


def _nested(fine: np.ndarray, coarse: np.ndarray) -> bool:
    """Whether every value of ``fine`` occurs with a single value of ``coarse``."""
    order = np.argsort(fine, kind="stable")
    f, c = fine[order], coarse[order]
    same_f = f[1:] == f[:-1]
    return bool(np.all(c[1:][same_f] == c[:-1][same_f]))


def _influence_stats(
    name: str,
    value: float,
    psi: np.ndarray,
    *,
    method: str,
    cols: Columns,
    cluster: str | None,
    strata: np.ndarray | None = None,
    counted: np.ndarray | None = None,
    clusters: np.ndarray | None = None,
    labels: np.ndarray | None = None,
) -> ArmStats:
    if clusters is None:
        clusters = _clusters_for(cols, cluster)
    if not _finite(value):
        return ArmStats(name, value, None, method, cluster, 0, cols.n, sample_ids=cols.sample_ids)
    var, units = influence_variance(psi, strata=strata, clusters=clusters, counted=counted)
    se = math.sqrt(var) if _finite(var) else None
    return ArmStats(
        name,
        value,
        se,
        method,
        cluster,
        units,
        cols.n,
        psi=psi,
        strata=strata,
        labels=strata if labels is None else labels,
        clusters=clusters,
        counted=counted,
        sample_ids=cols.sample_ids,
    )


def _grouped_stats(metric: Any, cols: Columns, name: str, cluster: str | None) -> ArmStats:
    key_name = metric.grouping_key_name
    keys = cols.key(key_name) if key_name in cols.keys else None
    if keys is None:
        raise StatsInputError(
            "cluster", f"{name}: no key column {key_name!r} for the metric's groups"
        )
    fn = grouped_auc_influence if type(metric).__name__ == "GroupedAUC" else grouped_xauc_influence
    r = fn(cols.preds, cols.target, keys)
    method = "delta-over-groups"
    if cluster is not None and cluster != key_name:
        coarse = cols.key(cluster)
        if not _nested(keys, coarse):
            log.warning(
                "%s: groups %r are not nested in cluster %r; clustering by the groups",
                name,
                key_name,
                cluster,
            )
            cluster = key_name
    else:
        cluster = key_name
    clusters = cols.key(cluster)
    if not _finite(r.value):
        return ArmStats(name, r.value, None, method, cluster, 0, cols.n, sample_ids=cols.sample_ids)
    if cluster == key_name:
        var, units = r.variance, r.groups_counted
    else:
        var, units = influence_variance(r.psi, clusters=clusters, counted=r.counted)
    se = math.sqrt(var) if _finite(var) else None
    return ArmStats(
        name,
        r.value,
        se,
        method,
        cluster,
        units,
        cols.n,
        psi=r.psi,
        clusters=clusters,
        counted=r.counted,
        sample_ids=cols.sample_ids,
    )


def _bootstrap_units(cols: Columns, cluster: str | None) -> np.ndarray:
    """The resampled units of each sample: cluster ids, else sample ids, else positions."""
    if cluster is not None:
        return cols.key(cluster)
    if cols.sample_ids is not None:
        return cols.sample_ids
    return np.arange(cols.n, dtype=np.int64)


def _ratio_bootstrap_stats(
    num: np.ndarray,
    den: np.ndarray,
    cols: Columns,
    name: str,
    cluster: str | None,
    replicates: int,
    seed: int,
) -> ArmStats:
    """Poisson bootstrap of ``Σ num / Σ den`` (e.g. recall@k: hits over relevant items),
    per unit: the terms are summed per unit once, a replicate is two dot products."""
    units = _bootstrap_units(cols, cluster)
    total = float(den.sum())
    value = float(num.sum()) / total if total > 0 else math.nan
    codes, ids = compact_codes(units)
    n_units = int(ids.size)
    if not _finite(value) or n_units < 2:
        return ArmStats(name, value, None, "poisson-bootstrap", cluster, n_units, cols.n)
    num_u = np.bincount(codes, weights=num, minlength=n_units)
    den_u = np.bincount(codes, weights=den, minlength=n_units)
    reps = np.empty(replicates)
    step = max(1, _BLOCK_ELEMENTS // n_units)  # replicates per block of counts
    for first in range(0, replicates, step):
        k = min(step, replicates - first)
        c = poisson_counts_block(ids, first, k, seed).astype(np.float64)
        d = c @ den_u
        with np.errstate(divide="ignore", invalid="ignore"):
            reps[first : first + k] = np.where(d > 0, (c @ num_u) / d, math.nan)
    ok = np.isfinite(reps)
    se = float(np.std(reps[ok], ddof=1)) if ok.sum() >= 2 else None
    return ArmStats(
        name,
        value,
        se,
        "poisson-bootstrap",
        cluster,
        n_units,
        cols.n,
        sample_ids=cols.sample_ids,
        replicates=reps,
        bootstrap_seed=seed,
    )


def _bootstrap_stats(
    metric: Any, cols: Columns, name: str, cluster: str | None, replicates: int, seed: int
) -> ArmStats:
    key_name = getattr(metric, "grouping_key_name", None) if metric.needs_grouping_key else None
    if key_name is not None and key_name not in cols.keys:
        raise StatsInputError("cluster", f"{name}: no key column {key_name!r} for its groups")
    value = metric_on(metric, cols, None, key_name)
    units = _bootstrap_units(cols, cluster)
    if cols.n * replicates > MAX_BOOTSTRAP_ROWS:
        reduced = max(MIN_REPLICATES, MAX_BOOTSTRAP_ROWS // max(cols.n, 1))
        if reduced < replicates:
            log.info("%s: %d bootstrap replicates of %d rows (cost cap)", name, reduced, cols.n)
            replicates = reduced
    n_units = int(compact_codes(units)[1].size)
    base = ArmStats(name, value, None, "poisson-bootstrap", cluster, n_units, cols.n)
    if not _finite(value) or n_units < 2:
        return base
    reps = np.empty(replicates)
    rows_all = np.arange(cols.n)
    for b in range(replicates):
        rows = np.repeat(rows_all, poisson_counts(units, b, seed))
        reps[b] = metric_on(metric, cols, rows, key_name)
    ok = np.isfinite(reps)
    se = float(np.std(reps[ok], ddof=1)) if ok.sum() >= 2 else None
    return ArmStats(
        name,
        value,
        se,
        "poisson-bootstrap",
        cluster,
        n_units,
        cols.n,
        sample_ids=cols.sample_ids,
        replicates=reps,
        bootstrap_seed=seed,
    )


def arm_stats(
    metric: Any,
    cols: Columns,
    *,
    name: str,
    cluster: str | None,
    bootstrap_replicates: int = DEFAULT_REPLICATES,
    seed: int = 0,
) -> ArmStats:
    """Value, standard error and pairing data of ``metric`` on one arm's samples.

    ``cluster`` names a key column of ``cols.keys`` whose values are the independent
    units (e.g. ``"user_id"``), or None for independent samples; an unknown name raises
    ``StatsInputError`` (a ``ValueError``, field ``cluster``).

    >>> from rankboard.service.metrics import AUC
    >>> rng = np.random.default_rng(0)
    >>> y = rng.integers(0, 2, 1000)
    >>> cols = Columns(rng.normal(y, 1.0).astype(np.float32), y)
    >>> s = arm_stats(AUC(thresholds=0), cols, name="auc", cluster=None)
    >>> round(s.value, 4), round(s.se, 4), s.method, s.n_units
    (0.7901, 0.0142, 'delong', 1000)
    """
    if cluster is not None:
        cols.key(cluster)  # unknown column: StatsInputError naming "cluster"
    kind = type(metric).__name__
    if _is_train(metric):
        value = float(metric.compute())
        return ArmStats(name, value, None, "none", None, 0, cols.n)
    suffix = "-clustered" if cluster is not None else ""
    p, y, w = cols.preds, cols.target, cols.weights
    if kind == "AUC":
        thresholds = int(getattr(metric, "thresholds", 0) or 0)
        bins = int(getattr(metric, "bins", 0) or 0)
        if thresholds and not hasattr(metric, "bins"):  # before threshold points existed
            bins, thresholds = thresholds, 0
        if thresholds or bins:
            r = binned_auc_influence(p, y, bins=bins, thresholds=thresholds, weights=w)
        else:
            r = auc_influence(p, y, w)
        return _influence_stats(
            name,
            r.value,
            r.psi,
            method="delong" + suffix,
            cols=cols,
            cluster=cluster,
            strata=r.strata,
        )
    if kind == "XAUC" and not metric.in_batch and not metric.sampling:
        rx = xauc_influence(p, y)
        return _influence_stats(
            name, rx.value, rx.psi, method="u-statistic" + suffix, cols=cols, cluster=cluster
        )
    if kind == "GroupedAUC" or (
        kind == "GroupedXAUC" and getattr(metric, "max_pairs_per_group", None) is None
    ):
        return _grouped_stats(metric, cols, name, cluster)
    if kind == "NormalizedEntropy":
        rn = ne_influence(p, y, w, eta=metric.eta)
        return _influence_stats(
            name, rn.value, rn.psi, method="delta" + suffix, cols=cols, cluster=cluster
        )
    if kind in ("MeanSquaredError", "MeanAbsoluteError"):
        re_ = mean_error_influence(p, y, w, squared=kind == "MeanSquaredError")
        return _influence_stats(
            name, re_.value, re_.psi, method="delta" + suffix, cols=cols, cluster=cluster
        )
    if kind == "MulticlassAUC":
        thresholds = int(getattr(metric, "thresholds", 0) or 0)
        bins = int(getattr(metric, "bins", 0) or 0)
        if thresholds and not hasattr(metric, "bins"):  # before threshold points existed
            bins, thresholds = thresholds, 0
        rm = multiclass_auc_influence(
            p, y, average=metric.average, bins=bins, thresholds=thresholds
        )
        return _influence_stats(
            name,
            rm.value,
            rm.psi,
            method="delong" + suffix,
            cols=cols,
            cluster=cluster,
            labels=rm.labels,
        )
    if kind == "RecallAtK":
        return _ratio_bootstrap_stats(
            *recall_terms(p, y, metric.top_k), cols, name, cluster, bootstrap_replicates, seed
        )
    if kind == "Accuracy":
        ra = accuracy_influence(p, y, threshold=metric.threshold, top_k=metric.top_k)
        return _influence_stats(
            name, ra.value, ra.psi, method="delta" + suffix, cols=cols, cluster=cluster
        )
    return _bootstrap_stats(metric, cols, name, cluster, bootstrap_replicates, seed)


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
    if s.se is None or not _finite(s.value) or not _finite(s.se):
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
    if not (_finite(base.value) and _finite(arm.value)):
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
    if not _finite(var):
        return None, 0, "unpaired: fewer than two units"
    return math.sqrt(var), units, ""
