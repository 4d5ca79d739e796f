"""One arm's statistics: :func:`arm_stats` and :class:`ArmStats`.

:func:`arm_stats` turns one metric and one arm's :class:`Columns` into an
:class:`ArmStats` (value, standard error, method, the independent units, and what pairing
needs); :mod:`.compare` gives intervals and arm comparisons from it.

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
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

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
from rankboard.service.metrics.stats.variance import compact_codes, influence_variance
from rankboard.service.metrics.stats.xauc_var import xauc_influence

__all__ = ["MAX_BOOTSTRAP_ROWS", "MIN_REPLICATES", "ArmStats", "arm_stats", "finite"]

log = logging.getLogger(__name__)

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


class _Influence(Protocol):
    """What every influence function returns: the value and per-sample influence."""

    @property
    def value(self) -> float: ...

    @property
    def psi(self) -> np.ndarray: ...


def finite(x: float | None) -> bool:
    """Whether ``x`` is a finite number (None is not).

    >>> finite(0.5), finite(float("nan")), finite(None)
    (True, False, False)
    """
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
    if not finite(value):
        return ArmStats(name, value, None, method, cluster, 0, cols.n, sample_ids=cols.sample_ids)
    var, units = influence_variance(psi, strata=strata, clusters=clusters, counted=counted)
    se = math.sqrt(var) if finite(var) else None
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
    if not finite(r.value):
        return ArmStats(name, r.value, None, method, cluster, 0, cols.n, sample_ids=cols.sample_ids)
    if cluster == key_name:
        var, units = r.variance, r.groups_counted
    else:
        var, units = influence_variance(r.psi, clusters=clusters, counted=r.counted)
    se = math.sqrt(var) if finite(var) else None
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


def _replicate_stats(
    name: str,
    value: float,
    reps: np.ndarray,
    cluster: str | None,
    n_units: int,
    cols: Columns,
    seed: int,
) -> ArmStats:
    """A bootstrap's :class:`ArmStats`: the SE is the finite replicates' SD."""
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
    if not finite(value) or n_units < 2:
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
    return _replicate_stats(name, value, reps, cluster, n_units, cols, seed)


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
    if not finite(value) or n_units < 2:
        return base
    reps = np.empty(replicates)
    rows_all = np.arange(cols.n)
    for b in range(replicates):
        rows = np.repeat(rows_all, poisson_counts(units, b, seed))
        reps[b] = metric_on(metric, cols, rows, key_name)
    return _replicate_stats(name, value, reps, cluster, n_units, cols, seed)


def _bins_thresholds(metric: Any) -> tuple[int, int]:
    """``(bins, thresholds)`` of an AUC-type metric (0, 0: exact); a metric from before
    threshold points existed has only ``thresholds``, which meant bins then."""
    thresholds = int(getattr(metric, "thresholds", 0) or 0)
    bins = int(getattr(metric, "bins", 0) or 0)
    if thresholds and not hasattr(metric, "bins"):
        bins, thresholds = thresholds, 0
    return bins, thresholds


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
    p, y, w = cols.preds, cols.target, cols.weights
    influence: _Influence | None = None
    method = "delta"
    extra: dict[str, np.ndarray] = {}
    if kind == "AUC":
        bins, thresholds = _bins_thresholds(metric)
        if thresholds or bins:
            ra = binned_auc_influence(p, y, bins=bins, thresholds=thresholds, weights=w)
        else:
            ra = auc_influence(p, y, w)
        influence, method, extra = ra, "delong", {"strata": ra.strata}
    elif kind == "XAUC" and not metric.in_batch and not metric.sampling:
        influence, method = xauc_influence(p, y), "u-statistic"
    elif kind == "GroupedAUC" or (
        kind == "GroupedXAUC" and getattr(metric, "max_pairs_per_group", None) is None
    ):
        return _grouped_stats(metric, cols, name, cluster)
    elif kind == "NormalizedEntropy":
        influence = ne_influence(p, y, w, eta=metric.eta)
    elif kind in ("MeanSquaredError", "MeanAbsoluteError"):
        influence = mean_error_influence(p, y, w, squared=kind == "MeanSquaredError")
    elif kind == "MulticlassAUC":
        bins, thresholds = _bins_thresholds(metric)
        rm = multiclass_auc_influence(
            p, y, average=metric.average, bins=bins, thresholds=thresholds
        )
        influence, method, extra = rm, "delong", {"labels": rm.labels}
    elif kind == "RecallAtK":
        return _ratio_bootstrap_stats(
            *recall_terms(p, y, metric.top_k), cols, name, cluster, bootstrap_replicates, seed
        )
    elif kind == "Accuracy":
        influence = accuracy_influence(p, y, threshold=metric.threshold, top_k=metric.top_k)
    if influence is not None:
        method += "-clustered" if cluster is not None else ""
        return _influence_stats(
            name, influence.value, influence.psi, method=method, cols=cols, cluster=cluster, **extra
        )
    return _bootstrap_stats(metric, cols, name, cluster, bootstrap_replicates, seed)
