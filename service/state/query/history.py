"""Histories: a metric over decay steps (train) or eval steps with intervals."""

from __future__ import annotations

import threading
from typing import Any

import numpy as np

from rankboard.service.errors import NotFound
from rankboard.service.state.batch import RunKey
from rankboard.service.state.query.arms import arm_data, interval_fields
from rankboard.service.state.query.cache import cache_of
from rankboard.service.state.query.params import QueryParams
from rankboard.service.state.store import MetricStore

__all__ = ["forget", "history", "thin"]

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
    fields = interval_fields(data, QueryParams())
    row = {}
    for name, value in data.values.items():
        iv = fields["intervals"].get(name)
        row[name] = (value, iv[0] if iv else None, iv[1] if iv else None)
    with _HISTORY_LOCK:
        _HISTORY[hkey] = (version, row)
    return row


def forget(store: MetricStore, experiment: str) -> None:
    """Drop cached statistics and history points of a deleted experiment."""
    cache_of(store).forget(experiment)
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
