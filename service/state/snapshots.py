"""Cached metric snapshots: computed when state changed, not on every request.

A snapshot of (run, step) is computed from copies of the metric state taken
under the store's lock, then outside it. Readers get the cached snapshot; when
the run has changed since, a snapshot that is cheap to compute (its last computation
took under :data:`INLINE_RECOMPUTE_S`) is recomputed for the reader, so a GET right after
a send shows the new numbers; a costly one is served marked ``stale`` while a
background worker recomputes it (stale-while-revalidate), after a pause of
``min_interval_s`` or the last computation's duration, whichever is longer (a
snapshot of a large run is then at most about twice its compute time old, and
refreshing it takes at most half a core). A reader with no snapshot yet, or one asking
for a fresh one, computes in its own thread; concurrent readers of the same
snapshot share that one computation.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torchmetrics import Metric

from rankboard.service.state.batch import RunKey
from rankboard.service.telemetry import TELEMETRY

log = logging.getLogger(__name__)
SnapshotKey = tuple[RunKey, int]
#: a stale snapshot whose last computation took less than this is recomputed for the
#: reader at once (current numbers on the first GET after a send); slower ones are served
#: stale while a background worker refreshes them
INLINE_RECOMPUTE_S = 0.05


@dataclass(frozen=True)
class Snapshot:
    """Metric values of one (run, step) as of state version ``version``."""

    key: RunKey
    step: int
    version: int
    samples: int
    metrics: dict[str, float | None]
    extras: dict[str, float | None] = field(default_factory=dict)
    computed_at: float = 0.0
    compute_seconds: float = 0.0


def _number(value: torch.Tensor | float) -> float | None:
    x = float(value)
    return None if math.isnan(x) or math.isinf(x) else x


def compute_values(metrics: dict[str, Metric]) -> tuple[dict[str, float | None], dict]:
    """Compute every metric; a metric that fails gives None and a logged error."""
    values: dict[str, float | None] = {}
    extras: dict[str, float | None] = {}
    for name, metric in metrics.items():
        try:
            values[name] = _number(metric.compute())
            extra = getattr(metric, "extra_values", None)
            if callable(extra):  # e.g. NE's log loss (include_logloss)
                for key, value in extra().items():
                    extras[f"{name}.{key}"] = _number(value)
            count = getattr(metric, "num_groups", None)
            if count is not None and not callable(count):
                extras[f"{name}.groups"] = _number(count)
        except Exception:
            log.exception("computing %s failed", name)
            values[name] = None
    return values, extras


Source = Callable[[SnapshotKey], tuple[dict[str, Metric], int, int]]


class SnapshotCache:
    """Stale-while-revalidate cache of snapshots.

    ``source(key)`` returns ``(metric copies, samples, version)`` under the
    store's lock; ``version_of(key)`` the run's current version.
    """

    def __init__(
        self,
        source: Source,
        version_of: Callable[[SnapshotKey], int],
        min_interval_s: float = 0.2,
    ) -> None:
        self._source = source
        self._version_of = version_of
        self._min_interval = min_interval_s
        self._cache: dict[SnapshotKey, Snapshot] = {}
        self._locks: dict[SnapshotKey, threading.Lock] = {}
        self._lock = threading.Lock()
        self._wanted: set[SnapshotKey] = set()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._worker = threading.Thread(target=self._refresh_loop, name="snapshots", daemon=True)
        self._worker.start()

    def get(
        self, key: SnapshotKey, fresh: bool = False, wait: bool = True
    ) -> tuple[Snapshot, bool] | None:
        """The snapshot of ``key`` and whether it is stale.

        Without ``wait``, None instead of computing in this thread (there is no cached
        snapshot yet, or ``fresh`` asks for one): callers on an event loop use that.
        """
        current = self._version_of(key)
        cached = self._cache.get(key)
        if cached is not None and cached.version == current:
            return cached, False
        if (
            cached is not None
            and not fresh
            and not (wait and cached.compute_seconds < INLINE_RECOMPUTE_S)
        ):
            with self._lock:
                self._wanted.add(key)
            self._wake.set()
            return cached, True
        if not wait:
            return None
        snap = self._compute(key, min_version=current)
        return snap, snap.version != self._version_of(key)

    def _key_lock(self, key: SnapshotKey) -> threading.Lock:
        with self._lock:
            return self._locks.setdefault(key, threading.Lock())

    def _compute(self, key: SnapshotKey, min_version: int) -> Snapshot:
        with self._key_lock(key):
            cached = self._cache.get(key)
            if cached is not None and cached.version >= min_version:
                return cached
            metrics, samples, version = self._source(key)
            start = time.perf_counter()
            values, extras = compute_values(metrics)
            snap = Snapshot(
                key[0],
                key[1],
                version,
                samples,
                values,
                extras,
                computed_at=time.time(),
                compute_seconds=time.perf_counter() - start,
            )
            self._cache[key] = snap
            TELEMETRY.snapshot_compute.observe(snap.compute_seconds)  # telemetry (DASHBOARD)
            return snap

    def invalidate(self, experiment: str) -> None:
        """Forget every snapshot of ``experiment`` and its keys' locks (they live as long
        as their run: a deleted experiment leaves nothing here)."""
        with self._lock:
            for key in [k for k in self._cache if k[0].experiment == experiment]:
                self._cache.pop(key, None)
                self._wanted.discard(key)
            for key in [k for k in self._locks if k[0].experiment == experiment]:
                del self._locks[key]

    def _refresh_loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(timeout=1.0)
            self._wake.clear()
            if self._stop.is_set():
                return
            with self._lock:
                wanted, self._wanted = self._wanted, set()
            for key in wanted:
                cached = self._cache.get(key)
                if cached is not None:
                    # rest at least as long as the last computation took: refreshing a big
                    # run then uses at most half a core, the rest serves ingestion and reads
                    pause = max(self._min_interval, cached.compute_seconds)
                    # at most one pause: a wall clock set back must not stall refreshes
                    wait = min(pause, pause - (time.time() - cached.computed_at))
                    if wait > 0:
                        time.sleep(wait)
                try:
                    self._compute(key, min_version=self._version_of(key))
                except Exception:
                    log.exception("refreshing snapshot %s failed", key)

    def close(self) -> None:
        """Stop the background worker."""
        self._stop.set()
        self._wake.set()
        self._worker.join(timeout=5)
