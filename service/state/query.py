"""The read side: snapshots with their A/B statistics, comparisons and histories.

Every front end (REST routes, the dashboard, the Prometheus collector, the CLI through
REST) reads through these functions; they know nothing of HTTP. Point values come from
the store's snapshot cache; the statistics (:mod:`rankboard.service.metrics.stats`)
from a cache of per-arm statistics keyed by (run, step, state version, cluster), so a
dashboard that polls every few seconds computes them once per change of state, and an
eval step's history point (value and interval) once per version of that step.

Example::

    >>> import tempfile, numpy as np
    >>> from rankboard.protos import ingest_pb2
    >>> from rankboard.service.state.batch import encode_array
    >>> from rankboard.service.state.store import MetricStore, StoreConfig
    >>> d = tempfile.TemporaryDirectory()
    >>> store = MetricStore(StoreConfig(data_dir=d.name))
    >>> rng = np.random.default_rng(0)
    >>> y = rng.integers(0, 2, 400).astype(np.float32)
    >>> for arm, shift in (("a", 0.0), ("b", 0.1)):
    ...     p = np.clip(0.3 + 0.3 * y + shift * y + rng.normal(0, 0.2, 400), 0, 1)
    ...     _ = store.ingest(ingest_pb2.Batch(producer_id=arm, sequence=1, experiment="e",
    ...         arm=arm, task="ctr", phase=ingest_pb2.PHASE_EVAL, step=1,
    ...         predictions=encode_array(p.astype(np.float32)), labels=encode_array(y),
    ...         sample_ids=encode_array(np.arange(400, dtype=np.int64))))
    >>> out = compare(store, "e", "ctr", "a", QueryParams())
    >>> out["arms"]["b"]["paired"], out["arms"]["b"]["verdicts"]["auc"]
    (True, 'better')
    >>> store.close(); d.cleanup()
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from rankboard.service.errors import InvalidQuery, NotFound
from rankboard.service.metrics import stats
from rankboard.service.state.batch import RunKey
from rankboard.service.state.snapshots import INLINE_RECOMPUTE_S
from rankboard.service.state.store import MetricStore

log = logging.getLogger(__name__)

#: bytes of influence values etc. the statistics cache may hold
STATS_CACHE_BYTES = 512 << 20


@dataclass(frozen=True)
class QueryParams:
    """How to compute intervals: ``alpha``, ``cluster`` (a key column, ``"none"``, or None
    for the default), ``sequential`` (always-valid confidence sequences) and its
    ``horizon`` (planned number of independent units), and ``fresh`` (wait for values
    that include every batch applied so far)."""

    alpha: float = 0.05
    cluster: str | None = None
    sequential: bool = False
    horizon: int | None = None
    fresh: bool = False

    def checked(self) -> QueryParams:
        """Raise :class:`InvalidQuery` naming the field that is out of range."""
        if not (isinstance(self.alpha, float | int) and 0 < self.alpha <= 0.5):
            raise InvalidQuery(f"alpha must be in (0, 0.5], got {self.alpha}")
        if self.horizon is not None and self.horizon < 1:
            raise InvalidQuery(
                f"horizon must be >= 1 (planned independent units), got {self.horizon}"
            )
        return self


def _finite(x: Any) -> float | None:
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def _pair(bounds: tuple[float, float] | None) -> list[float] | None:
    if bounds is None:
        return None
    lo, hi = _finite(bounds[0]), _finite(bounds[1])
    return None if lo is None or hi is None else [lo, hi]


# --- per-arm statistics, cached --------------------------------------------------------
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


class StatsCache:
    """Per-arm statistics, stale-while-revalidate, bounded in bytes (LRU).

    Keys are ``(run, step, cluster)``; each entry remembers the state version it was
    computed at. A reader gets the entry of the current version; when state moved on, a
    cheap entry (computed in under ``INLINE_RECOMPUTE_S``) is recomputed for the reader,
    a costly one comes back as it was (``stale``) while one background thread
    recomputes, so polling dashboards never wait for a large arm's statistics; ``fresh``
    readers compute (one computation per key at a time, shared by concurrent readers).
    """

    def __init__(self, max_bytes: int = STATS_CACHE_BYTES) -> None:
        self._max = max_bytes
        self._items: OrderedDict[tuple, tuple[int, Any, int, float]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self._key_locks: dict[tuple, threading.Lock] = {}
        self._pending: set[tuple] = set()
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="stats")

    def get(self, key: tuple, version: int, compute: Any, fresh: bool) -> tuple[Any, bool]:
        """``(value, stale)``: ``compute()`` returns ``(value, nbytes)`` of ``version``."""
        with self._lock:
            hit = self._items.get(key)
            if hit is not None:
                self._items.move_to_end(key)
                if hit[0] >= version:
                    return hit[1], False
                if not fresh and hit[3] >= INLINE_RECOMPUTE_S:  # cheap ones: compute now
                    if key not in self._pending:
                        self._pending.add(key)
                        self._pool.submit(self._refresh, key, version, compute)
                    return hit[1], True
        return self._compute(key, version, compute), False

    def _refresh(self, key: tuple, version: int, compute: Any) -> None:
        try:
            self._compute(key, version, compute)
        except Exception:  # the next reader retries; the stale entry stays served
            log.exception("refreshing statistics of %s failed", key)
        finally:
            with self._lock:
                self._pending.discard(key)

    def _compute(self, key: tuple, version: int, compute: Any) -> Any:
        with self._lock:
            key_lock = self._key_locks.setdefault(key, threading.Lock())
        with key_lock:
            with self._lock:
                hit = self._items.get(key)
                if hit is not None and hit[0] >= version:
                    return hit[1]
            started = time.perf_counter()
            value, nbytes = compute()
            seconds = time.perf_counter() - started
            with self._lock:
                old = self._items.pop(key, None)
                if old is not None:
                    self._bytes -= old[2]
                self._items[key] = (version, value, nbytes, seconds)
                self._bytes += nbytes
                while self._bytes > self._max and len(self._items) > 1:
                    _, (_, _, dropped, _) = self._items.popitem(last=False)
                    self._bytes -= dropped
            return value

    def forget(self, experiment: str) -> None:
        """Drop the entries of a deleted experiment."""
        with self._lock:
            for key in [k for k in self._items if k[0].experiment == experiment]:
                self._bytes -= self._items.pop(key)[2]


def _nbytes(obj: Any, depth: int = 0) -> int:
    if isinstance(obj, np.ndarray):
        return int(obj.nbytes)
    if depth > 3:
        return 0
    if isinstance(obj, dict):
        return sum(_nbytes(v, depth + 1) for v in obj.values())
    if isinstance(obj, list | tuple):
        return sum(_nbytes(v, depth + 1) for v in obj)
    d = getattr(obj, "__dict__", None)
    if d is None and hasattr(obj, "__dataclass_fields__"):
        d = {f: getattr(obj, f) for f in obj.__dataclass_fields__}
    return sum(_nbytes(v, depth + 1) for v in (d or {}).values())


_CACHES: dict[int, StatsCache] = {}
_CACHES_LOCK = threading.Lock()


def _cache_of(store: MetricStore) -> StatsCache:
    with _CACHES_LOCK:
        cache = _CACHES.get(id(store))
        if cache is None:
            cache = _CACHES[id(store)] = StatsCache()
        return cache


def resolve_cluster(requested: str | None, key_columns: list[str]) -> str | None:
    """The cluster key column in effect.

    None: the run's grouping-key column when it has exactly one, else independent
    samples; ``"none"``: independent samples; a name: that column (must exist).

    >>> resolve_cluster(None, ["user_id"]), resolve_cluster("none", ["user_id"])
    ('user_id', None)
    >>> resolve_cluster(None, ["user_id", "session"]) is None
    True
    """
    if requested is None:
        return key_columns[0] if len(key_columns) == 1 else None
    if requested == "none":
        return None
    if requested not in key_columns:
        raise InvalidQuery(
            f"cluster: unknown column {requested!r}; the run's grouping-key columns are"
            f" {', '.join(key_columns) or 'none'} (or cluster=none for independent samples)"
        )
    return requested


def arm_data(store: MetricStore, key: RunKey, step: int | None, params: QueryParams) -> ArmData:
    """Values (and, for eval runs, statistics) of ``key`` at ``step`` (default latest)."""
    snap, stale = store.snapshot(key, step, fresh=params.fresh)
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
        return out, _nbytes(out)

    # a step's statistics change only when that step gets samples (its sample count is
    # its version): new eval steps do not invalidate the older ones
    window = run.windows.get(snap.step)
    step_version = window.samples if window is not None else snap.samples
    computed, stats_stale = _cache_of(store).get(
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


def _interval_fields(data: ArmData, params: QueryParams) -> dict[str, Any]:
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


def _groups(data: ArmData) -> dict[str, int]:
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
        "groups": _groups(data),
        "metrics": data.values,
        "extras": data.extras,
        "version": data.version,
        "stale": data.stale,
        "computed_at": data.computed_at,
        "alpha": params.alpha,
        "sequential": params.sequential,
        "cluster": data.cluster,
        **_interval_fields(data, params),
    }


# --- experiments ----------------------------------------------------------------------
def _by_experiment(store: MetricStore) -> dict[str, list]:
    grouped: dict[str, list] = {}
    for run in store.runs():
        grouped.setdefault(run.key.experiment, []).append(run)
    return grouped


def _summary(name: str, runs: list) -> dict[str, Any]:
    return {
        "name": name,
        "arms": sorted({r.key.arm for r in runs}),
        "tasks": sorted({r.key.task for r in runs}),
        "phases": sorted({r.key.phase for r in runs}),
        "samples": sum(r.samples for r in runs),
        "updated_at": max(r.updated_at for r in runs),
    }


def experiments(store: MetricStore) -> list[dict[str, Any]]:
    """Every experiment: arms, tasks, phases, samples, last update (unix seconds)."""
    return [_summary(name, runs) for name, runs in sorted(_by_experiment(store).items())]


def experiment_detail(store: MetricStore, experiment: str) -> dict[str, Any]:
    """One experiment's summary and its runs."""
    runs = _by_experiment(store).get(experiment)
    if not runs:
        raise NotFound(f"experiment {experiment!r} not found")
    out = _summary(experiment, runs)
    out["runs"] = [
        {
            "arm": r.key.arm,
            "task": r.key.task,
            "phase": r.key.phase,
            "samples": r.samples,
            "steps": sorted(r.windows) if r.key.phase == "eval" else [],
            "last_step": r.last_step,
            "metrics": r.metric_keys,
            "declaration": r.declaration,
            "declared": r.declared,
            "retained_bytes": round(r.retained_bytes),
            "updated_at": r.updated_at,
        }
        for r in runs
    ]
    return out


# --- comparisons ----------------------------------------------------------------------
def _runs_of(store: MetricStore, experiment: str, task: str, phase: str) -> list:
    runs = [r for r in store.runs() if r.key.experiment == experiment]
    if not runs:
        raise NotFound(f"experiment {experiment!r} not found")
    chosen = [r for r in runs if (r.key.task, r.key.phase) == (task, phase)]
    if not chosen:
        tasks = sorted({r.key.task for r in runs if r.key.phase == phase})
        raise NotFound(
            f"experiment {experiment!r} has no {phase} run of task {task!r}"
            f" ({phase} tasks: {', '.join(tasks) or 'none'}; names are case-sensitive)"
        )
    return chosen


def common_step(steps_by_arm: dict[str, list[int]], step: int | None) -> tuple[int, str | None]:
    """The eval step to compare: ``step`` (every arm must have it) or the latest that
    every arm has; and a note when some arm has later steps.

    >>> common_step({"a": [1, 2], "b": [1]}, None)
    (1, 'compared at step 1, the latest step every arm has; later steps: a: 2')
    >>> common_step({"a": [1, 2], "b": [1, 2]}, None)
    (2, None)
    """
    if step is not None:
        for arm, steps in sorted(steps_by_arm.items()):
            if step not in steps:
                raise NotFound(
                    f"arm {arm!r} has no eval step {step} (its steps: {_steps_text(steps)})"
                )
        return step, None
    shared = set.intersection(*(set(s) for s in steps_by_arm.values()))
    if not shared:
        detail = "; ".join(f"{a}: {_steps_text(s)}" for a, s in sorted(steps_by_arm.items()))
        raise NotFound(f"the arms share no eval step ({detail}); pass step= to choose one")
    chosen = max(shared)
    later = {a: [s for s in steps if s > chosen] for a, steps in steps_by_arm.items()}
    later = {a: s for a, s in later.items() if s}
    note = None
    if later:
        parts = "; ".join(f"{a}: {_steps_text(s)}" for a, s in sorted(later.items()))
        note = f"compared at step {chosen}, the latest step every arm has; later steps: {parts}"
    return chosen, note


def _steps_text(steps: list[int]) -> str:
    steps = sorted(steps)
    if len(steps) > 8:
        return ", ".join(map(str, steps[:3])) + f", ... ({len(steps)} steps), {steps[-1]}"
    return ", ".join(map(str, steps)) or "none"


def compare(
    store: MetricStore,
    experiment: str,
    task: str,
    baseline: str,
    params: QueryParams,
    phase: str = "eval",
    step: int | None = None,
) -> dict[str, Any]:
    """The body of ``GET /v1/experiments/{e}/compare``: every arm against ``baseline``."""
    params.checked()
    runs = _runs_of(store, experiment, task, phase)
    arms = sorted(r.key.arm for r in runs)
    if baseline not in arms:
        raise NotFound(
            f"baseline arm {baseline!r} has no {phase} run of task {task!r}"
            f" (arms: {', '.join(arms)})"
        )
    note = None
    if phase == "eval":
        step, note = common_step({r.key.arm: sorted(r.windows) for r in runs}, step)
    data = {r.key.arm: arm_data(store, r.key, step, params) for r in runs}
    base = data[baseline]
    clusters = {d.cluster for d in data.values()}
    out_arms: dict[str, Any] = {}
    for arm in arms:
        d = data[arm]
        fields = _interval_fields(d, params)
        delta, rel = {}, {}
        d_int: dict[str, list[float] | None] = {}
        d_se: dict[str, float | None] = {}
        p_values: dict[str, float | None] = {}
        verdicts: dict[str, str | None] = {}
        paired = False
        paired_samples = 0
        pairing = "baseline" if arm == baseline else "unpaired: no statistics"
        for name, v in d.values.items():
            b = base.values.get(name)
            delta[name] = None if v is None or b is None else v - b
            rel[name] = None if delta[name] is None or not b else delta[name] / abs(b)
            d_int[name] = d_se[name] = p_values[name] = verdicts[name] = None
            if arm == baseline:
                continue
            sa, sb = (base.stats or {}).get(name), (d.stats or {}).get(name)
            if sa is None or sb is None:
                verdicts[name] = "inconclusive" if phase == "eval" else None
                continue
            res = stats.compare_arms(
                sa[0],
                sb[0],
                alpha=params.alpha,
                sequential=params.sequential,
                horizon=params.horizon,
                higher_is_better=sb[1],
            )
            d_int[name] = _pair((res.low, res.high)) if res.low is not None else None
            d_se[name] = _finite(res.se)
            p_values[name] = _finite(res.p_value)
            verdicts[name] = res.verdict
            fields["methods"][name] = res.method
            paired, paired_samples, pairing = res.paired, res.paired_samples, res.pairing
        out_arms[arm] = {
            "step": d.step,
            "samples": d.samples,
            "positives": d.positives,
            "negatives": d.negatives,
            "groups": _groups(d),
            "metrics": d.values,
            "delta": delta,
            "relative_delta": rel,
            **fields,
            "delta_intervals": d_int,
            "delta_standard_errors": d_se,
            "p_values": p_values,
            "verdicts": verdicts,
            "paired": paired,
            "paired_samples": paired_samples,
            "pairing": pairing,
            "cluster": d.cluster,
            "stale": d.stale,
            "computed_at": d.computed_at,
        }
    return {
        "experiment": experiment,
        "task": task,
        "phase": phase,
        "baseline": baseline,
        "step": step if phase == "eval" else None,
        "note": note,
        "alpha": params.alpha,
        "sequential": params.sequential,
        "horizon": params.horizon,
        "cluster": clusters.pop() if len(clusters) == 1 else None,
        "arms": out_arms,
    }


# --- history ---------------------------------------------------------------------------
_HISTORY: dict[tuple[int, RunKey, int], tuple[int, dict[str, tuple]]] = {}
_HISTORY_LOCK = threading.Lock()


def history(
    store: MetricStore, key: RunKey, metric: str, max_points: int | None = None
) -> list[dict[str, Any]]:
    """``[{step, value, low, high}]`` of ``metric``: decay steps (train, no interval) or
    eval steps (95 % interval at the run's default cluster, computed once per version of
    each step and kept; a GET never writes). ``max_points`` thins the points evenly,
    always keeping the first and the last.
    """
    run = store.run(key)
    if metric not in run.metric_keys:
        raise NotFound(f"run has no metric {metric!r} (it has: {', '.join(run.metric_keys)})")
    if key.phase == "train":
        points = [
            {"step": s, "value": v, "low": None, "high": None}
            for s, v in store.registry.history(
                (key.experiment, key.arm, key.task, key.phase), metric
            )
        ]
    else:
        points = []
        for step in sorted(list(run.windows)):
            value, low, high = _eval_point(store, key, step).get(metric, (None, None, None))
            points.append({"step": step, "value": value, "low": low, "high": high})
    return thin(points, max_points)


def _eval_point(store: MetricStore, key: RunKey, step: int) -> dict[str, tuple]:
    run = store.run(key)
    version = run.windows[step].samples if step in run.windows else -1
    hkey = (id(store), key, step)
    with _HISTORY_LOCK:
        hit = _HISTORY.get(hkey)
    if hit is not None and hit[0] == version:
        return hit[1]
    data = arm_data(store, key, step, QueryParams())
    fields = _interval_fields(data, QueryParams())
    row = {}
    for name, value in data.values.items():
        iv = fields["intervals"].get(name)
        row[name] = (value, iv[0] if iv else None, iv[1] if iv else None)
    with _HISTORY_LOCK:
        _HISTORY[hkey] = (version, row)
    return row


def forget(store: MetricStore, experiment: str) -> None:
    """Drop cached statistics and history points of a deleted experiment."""
    _cache_of(store).forget(experiment)
    with _HISTORY_LOCK:
        for k in [k for k in _HISTORY if k[0] == id(store) and k[1].experiment == experiment]:
            del _HISTORY[k]


def thin(points: list[dict[str, Any]], max_points: int | None) -> list[dict[str, Any]]:
    """At most ``max_points`` points, evenly spaced by index, first and last kept.

    >>> [p["step"] for p in thin([{"step": s} for s in range(10)], 4)]
    [0, 3, 6, 9]
    """
    if max_points is None or len(points) <= max_points:
        return points
    if max_points < 2:
        return points[-1:]
    idx = np.unique(np.round(np.linspace(0, len(points) - 1, max_points)).astype(int))
    return [points[i] for i in idx]
