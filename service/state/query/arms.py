"""One arm at one step: its values, statistics and intervals (``/metrics``)."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from rankboard.service.metrics import stats
from rankboard.service.state.batch import RunKey
from rankboard.service.state.query.cache import cache_of, nbytes_of
from rankboard.service.state.query.params import QueryParams, resolve_cluster
from rankboard.service.state.store import MetricStore

__all__ = ["ArmData", "arm_data", "interval_fields", "metrics_snapshot"]

log = logging.getLogger(__name__)


def _finite(x: Any) -> float | None:
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def _pair(bounds: tuple[float | None, float | None] | None) -> list[float] | None:
    if bounds is None:
        return None
    lo, hi = _finite(bounds[0]), _finite(bounds[1])
    return None if lo is None or hi is None else [lo, hi]


@dataclass(frozen=True)
class ArmData:
    """One eval step of one arm with its statistics (``stats`` None for train runs)."""

    key: RunKey
    step: int
    version: int
    samples: int
    values: dict[str, float | None]
    extras: dict[str, float | None]
    stats: dict[str, Any] | None  # metric -> (stats.ArmStats, higher is better)
    cluster: str | None
    positives: int | None
    negatives: int | None
    stale: bool
    computed_at: float


def arm_data(store: MetricStore, key: RunKey, step: int | None, params: QueryParams) -> ArmData:
    """Values (and, for eval runs, statistics) of ``key`` at ``step`` (default latest)."""
    got = store.snapshot(key, step, fresh=params.fresh)
    assert got is not None  # None only with wait=False
    snap, stale = got
    run = store.run(key)
    if key.phase != "eval":
        return ArmData(
            key,
            run.last_step,
            snap.version,
            snap.samples,
            snap.metrics,
            snap.extras,
            None,
            None,
            None,
            None,
            stale,
            snap.computed_at,
        )
    cluster = resolve_cluster(params.cluster, run.key_columns(snap.step))

    def compute() -> tuple[dict[str, Any], int]:
        metrics, columns = store.eval_sources(key, snap.step)
        out: dict[str, Any] = {}
        if columns is None:
            return out, 0
        cols = columns.view()
        for name, metric in metrics.items():
            try:
                s = stats.arm_stats(metric, cols, name=name, cluster=cluster)
                out[name] = (s, stats.higher_is_better(metric))
            except Exception:  # a metric without statistics still has its value
                log.exception("statistics of %s failed", name)
        out["__counts__"] = _label_counts(cols.target, run.label_kind)
        return out, nbytes_of(out)

    # a step's statistics change only when that step gets samples (its sample count is
    # its version): new eval steps do not invalidate the older ones
    window = run.windows.get(snap.step)
    step_version = window.samples if window is not None else snap.samples
    computed, stats_stale = cache_of(store).get(
        (key, snap.step, cluster), step_version, compute, params.fresh
    )
    counts = computed.get("__counts__", (None, None))
    arm_stats = {k: v for k, v in computed.items() if k != "__counts__"}
    return ArmData(
        key,
        snap.step,
        snap.version,
        snap.samples,
        snap.metrics,
        snap.extras,
        arm_stats,
        cluster,
        counts[0],
        counts[1],
        stale or stats_stale,
        snap.computed_at,
    )


def _label_counts(target: np.ndarray, label_kind: str) -> tuple[int | None, int | None]:
    if label_kind != "binary":
        return None, None
    pos = int(np.count_nonzero(target == 1))
    return pos, int(target.shape[0]) - pos


def interval_fields(data: ArmData, params: QueryParams) -> dict[str, Any]:
    ses: dict[str, float | None] = {}
    intervals: dict[str, list[float] | None] = {}
    methods: dict[str, str] = {}
    for name in data.values:
        got = (data.stats or {}).get(name)
        s = None if got is None else got[0]
        if s is None:
            ses[name], intervals[name] = None, None
            methods[name] = "none" if data.key.phase == "train" else "unavailable"
            continue
        ses[name] = _finite(s.se)
        intervals[name] = _pair(
            stats.interval(
                s, alpha=params.alpha, sequential=params.sequential, horizon=params.horizon
            )
        )
        methods[name] = s.method
    return {"standard_errors": ses, "intervals": intervals, "methods": methods}


def groups_of(data: ArmData) -> dict[str, int]:
    return {
        k.removesuffix(".groups"): int(v)
        for k, v in data.extras.items()
        if k.endswith(".groups") and v is not None
    }


def metrics_snapshot(
    store: MetricStore, key: RunKey, step: int | None, params: QueryParams
) -> dict[str, Any]:
    """The body of ``GET .../arms/{arm}/metrics``: values with their intervals."""
    params.checked()
    data = arm_data(store, key, step, params)
    return {
        "experiment": key.experiment,
        "arm": key.arm,
        "task": key.task,
        "phase": key.phase,
        "step": data.step,
        "samples": data.samples,
        "positives": data.positives,
        "negatives": data.negatives,
        "groups": groups_of(data),
        "metrics": data.values,
        "extras": data.extras,
        "version": data.version,
        "stale": data.stale,
        "computed_at": data.computed_at,
        "alpha": params.alpha,
        "sequential": params.sequential,
        "cluster": data.cluster,
        **interval_fields(data, params),
    }
