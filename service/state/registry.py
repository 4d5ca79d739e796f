"""The run registry and metric history in an embedded SQLite database.

Runs are registered when their first batch is applied; the history holds a
metric's value per point (a decay step of a train run, an eval step of an eval
run). Writes are idempotent (``INSERT OR REPLACE`` on natural keys), so the
replay of the write-ahead log after a crash rewrites the same rows.

Example::

    >>> reg = Registry(":memory:")
    >>> reg.register_run(("e", "a", "ctr", "eval"), "auc {}", "binary")
    >>> reg.record(("e", "a", "ctr", "eval"), "auc", point=1, step=100, value=0.75)
    >>> reg.history(("e", "a", "ctr", "eval"), "auc")
    [(100, 0.75)]
"""

from __future__ import annotations

import math
import sqlite3
import threading
import time
from collections.abc import Iterable
from pathlib import Path

RunTuple = tuple[str, str, str, str]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    experiment TEXT NOT NULL, arm TEXT NOT NULL, task TEXT NOT NULL, phase TEXT NOT NULL,
    declaration TEXT NOT NULL, label_kind TEXT NOT NULL, created_at REAL NOT NULL,
    PRIMARY KEY (experiment, arm, task, phase)
);
CREATE TABLE IF NOT EXISTS history (
    experiment TEXT NOT NULL, arm TEXT NOT NULL, task TEXT NOT NULL, phase TEXT NOT NULL,
    metric TEXT NOT NULL, point INTEGER NOT NULL, step INTEGER NOT NULL, value REAL,
    PRIMARY KEY (experiment, arm, task, phase, metric, point)
);
"""


class Registry:
    """Thread-safe access to the registry database at ``path``."""

    def __init__(self, path: str | Path) -> None:
        self._conn = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._lock = threading.Lock()
        with self._lock:
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=NORMAL")
            self._conn.executescript(_SCHEMA)

    def register_run(self, run: RunTuple, declaration: str, label_kind: str) -> None:
        """Record a run (kept as first registered)."""
        with self._lock:
            self._conn.execute(
                "INSERT OR IGNORE INTO runs VALUES (?, ?, ?, ?, ?, ?, ?)",
                (*run, declaration, label_kind, time.time()),
            )

    def record(self, run: RunTuple, metric: str, point: int, step: int, value: float) -> None:
        """Store the value of ``metric`` at history ``point`` (NaN stored as NULL)."""
        self.record_many(run, [(metric, point, step, value)])

    def record_many(self, run: RunTuple, rows: Iterable[tuple[str, int, int, float]]) -> None:
        """Store several ``(metric, point, step, value)`` rows in one transaction."""
        data = [
            (*run, m, p, s, None if v is None or math.isnan(v) else float(v)) for m, p, s, v in rows
        ]
        if not data:
            return
        with self._lock:
            self._conn.execute("BEGIN")
            self._conn.executemany(
                "INSERT OR REPLACE INTO history VALUES (?, ?, ?, ?, ?, ?, ?, ?)", data
            )
            self._conn.execute("COMMIT")

    def history(self, run: RunTuple, metric: str) -> list[tuple[int, float | None]]:
        """``(step, value)`` of ``metric`` in ``run``, in point order."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT step, value FROM history WHERE experiment=? AND arm=? AND task=?"
                " AND phase=? AND metric=? ORDER BY point",
                (*run, metric),
            ).fetchall()
        return [(int(s), v) for s, v in rows]

    def histories(
        self, run: RunTuple, metrics: Iterable[str], max_points: int | None = None
    ) -> dict[str, list[tuple[int, float | None]]]:
        """``(step, value)`` of each of ``metrics`` in ``run``, thinned to ``max_points``
        evenly spaced by index, first and last kept (rounded like ``numpy.round``), by
        primary-key lookups: a dashboard drawing 50 arms x 20 metrics x 1,000 points reads
        40 rows per series, not a million.

        The store numbers a metric's points without gaps (one per decay or eval step), so
        the kept ones are found from the first and last point alone. Where points are
        missing, the thinning is by point number instead (evenly spaced over the numbers,
        first and last kept), and a lookup that comes back short reads the metric whole
        and thins it by index.

        >>> reg = Registry(":memory:")
        >>> run = ("e", "a", "t", "train")
        >>> reg.record_many(run, [("auc", p, p * 10, p / 10) for p in range(10)])
        >>> reg.histories(run, ["auc"], 4)
        {'auc': [(0, 0.0), (30, 0.3), (60, 0.6), (90, 0.9)]}
        """
        where = "experiment=? AND arm=? AND task=? AND phase=? AND metric=?"
        out: dict[str, list[tuple[int, float | None]]] = {}
        for metric in metrics:
            with self._lock:
                lo, hi = self._conn.execute(
                    f"SELECT MIN(point), MAX(point) FROM history WHERE {where}", (*run, metric)
                ).fetchone()
                if lo is None:
                    out[metric] = []
                    continue
                points = [lo + i for i in _thin_indices(hi - lo + 1, max_points)]
                rows: list[tuple[int, float | None]] = []
                for chunk in range(0, len(points), 500):  # SQLite's variable limit
                    part = points[chunk : chunk + 500]
                    rows += self._conn.execute(
                        f"SELECT step, value FROM history WHERE {where}"
                        f" AND point IN ({','.join('?' * len(part))}) ORDER BY point",
                        (*run, metric, *part),
                    ).fetchall()
            if len(rows) != len(points):  # gaps: thin by index over the whole history
                whole = self.history(run, metric)
                rows = [whole[i] for i in _thin_indices(len(whole), max_points)]
            out[metric] = [(int(s), v) for s, v in rows]
        return out

    def runs(self) -> list[tuple[str, str, str, str, str, str]]:
        """All registered runs: ``(experiment, arm, task, phase, declaration, label_kind)``."""
        with self._lock:
            return self._conn.execute(
                "SELECT experiment, arm, task, phase, declaration, label_kind FROM runs"
                " ORDER BY experiment, arm, task, phase"
            ).fetchall()

    def delete_experiment(self, experiment: str) -> None:
        """Forget an experiment's runs and history."""
        with self._lock:
            self._conn.execute("BEGIN")
            self._conn.execute("DELETE FROM runs WHERE experiment=?", (experiment,))
            self._conn.execute("DELETE FROM history WHERE experiment=?", (experiment,))
            self._conn.execute("COMMIT")

    def sync(self) -> None:
        """Make every committed row durable on disk (an fsync'ed SQLite WAL checkpoint).

        ``synchronous=NORMAL`` keeps commits cheap but may lose the last ones on a power
        failure; the store calls this before it drops write-ahead log segments, which
        are then the only other record of the history rows they produced.
        """
        with self._lock:
            self._conn.execute("PRAGMA wal_checkpoint(FULL)")

    def close(self) -> None:
        """Close the database."""
        with self._lock:
            self._conn.close()


def _thin_indices(n: int, max_points: int | None) -> list[int]:
    """Indices of ``n`` points kept when thinning to ``max_points`` (see :meth:`histories`).

    >>> _thin_indices(10, 4), _thin_indices(3, 10), _thin_indices(5, 1)
    ([0, 3, 6, 9], [0, 1, 2], [4])
    """
    if max_points is None or n <= max_points:
        return list(range(n))
    if max_points < 2:
        return [n - 1]
    step = (n - 1) / (max_points - 1)
    return sorted({round(k * step) for k in range(max_points)})
