"""The per-arm statistics cache: stale-while-revalidate, bounded in bytes."""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from rankboard.service.state.snapshots import INLINE_RECOMPUTE_S
from rankboard.service.state.store import MetricStore

__all__ = ["STATS_CACHE_BYTES", "StatsCache", "cache_of"]

log = logging.getLogger(__name__)

#: bytes of influence values etc. the statistics cache may hold
STATS_CACHE_BYTES = 512 << 20


class StatsCache:
    """Per-arm statistics, stale-while-revalidate, bounded in bytes (LRU).

    Keys are ``(run, step, cluster)``; each entry remembers the state version it was
    computed at. A reader gets the entry of the current version; when state moved on, a
    cheap entry (computed in under ``INLINE_RECOMPUTE_S``) is recomputed for the reader,
    a costly one comes back as it was (``stale``) while one background thread
    recomputes, so polling dashboards never wait for a large arm's statistics; ``fresh``
    readers compute (one computation per key at a time, shared by concurrent readers).
    A background refresh first rests as long as the last computation of its key took, so
    a large arm that keeps receiving batches costs at most about half a core.
    """

    def __init__(self, max_bytes: int = STATS_CACHE_BYTES) -> None:
        self._max = max_bytes
        # key -> (version, value, nbytes, seconds it took, monotonic time it finished)
        self._items: OrderedDict[tuple, tuple[int, Any, int, float, float]] = OrderedDict()
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
        with self._lock:
            hit = self._items.get(key)
        if hit is not None:
            rest = hit[4] + hit[3] - time.monotonic()
            if rest > 0:
                time.sleep(min(rest, 60.0))
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
                self._items[key] = (version, value, nbytes, seconds, time.monotonic())
                self._bytes += nbytes
                while self._bytes > self._max and len(self._items) > 1:
                    _, (_, _, dropped, _, _) = self._items.popitem(last=False)
                    self._bytes -= dropped
            return value

    def forget(self, experiment: str) -> None:
        """Drop the entries of a deleted experiment."""
        with self._lock:
            for key in [k for k in self._items if k[0].experiment == experiment]:
                self._bytes -= self._items.pop(key)[2]
            for key in [k for k in self._key_locks if k[0].experiment == experiment]:
                del self._key_locks[key]


def nbytes_of(obj: Any, depth: int = 0) -> int:
    if isinstance(obj, np.ndarray):
        return int(obj.nbytes)
    if depth > 3:
        return 0
    if isinstance(obj, dict):
        return sum(nbytes_of(v, depth + 1) for v in obj.values())
    if isinstance(obj, list | tuple):
        return sum(nbytes_of(v, depth + 1) for v in obj)
    d = getattr(obj, "__dict__", None)
    if d is None and hasattr(obj, "__dataclass_fields__"):
        d = {f: getattr(obj, f) for f in obj.__dataclass_fields__}
    return sum(nbytes_of(v, depth + 1) for v in (d or {}).values())


_CACHES: dict[int, StatsCache] = {}
_CACHES_LOCK = threading.Lock()


def cache_of(store: MetricStore) -> StatsCache:
    with _CACHES_LOCK:
        cache = _CACHES.get(id(store))
        if cache is None:
            cache = _CACHES[id(store)] = StatsCache()
        return cache
