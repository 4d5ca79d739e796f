"""When and how the store checkpoints: scheduling, retention, the checkpointer thread.

A checkpoint is due once the log since the last one is large (:func:`checkpoint_due`)
or, periodically, while the log is not small next to the state. Writing takes the
state under the store's ingestion lock only long enough to take references and rotate
the log; the files are written beside ingestion, then the log the kept checkpoints
make unneeded is dropped (retention: :data:`checkpoint.KEEP` checkpoints).

Example::

    >>> checkpoint_due(300 << 20, 0, 256 << 20), checkpoint_due(300 << 20, 1 << 30, 256 << 20)
    (True, False)
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from rankboard.service.state import checkpoint
from rankboard.service.state.registry import Registry
from rankboard.service.state.wal import WriteAheadLog
from rankboard.service.telemetry import TELEMETRY

log = logging.getLogger(__name__)


def checkpoint_due(log_bytes: int, last_written: int, min_bytes: int) -> bool:
    """Whether the log since the last checkpoint calls for a new one.

    Due once the log reaches ``min_bytes`` and what the last checkpoint wrote: writing
    checkpoints then costs at most about as much I/O as the log itself.

    >>> checkpoint_due(300 << 20, 0, 256 << 20), checkpoint_due(300 << 20, 1 << 30, 256 << 20)
    (True, False)
    """
    return log_bytes >= max(min_bytes, last_written)


class Checkpointer:
    """Writes checkpoints of one store, on demand or from its own thread.

    ``take_state`` returns the state to save; it is called with ``lock`` held (the
    store's ingestion lock), and the log is rotated under the same hold. ``housekeeping``
    (TTL expiry) runs on each wake of the thread before the checkpoint check.
    """

    def __init__(
        self,
        checkpoints: checkpoint.Checkpoints,
        wal: WriteAheadLog,
        registry: Registry,
        lock: threading.RLock,
        take_state: Callable[[], dict[str, Any]],
        interval_s: float,
        wal_bytes: int,
        index: int,
        housekeeping: Callable[[], object] | None = None,
    ) -> None:
        self._checkpoints = checkpoints
        self._wal = wal
        self._registry = registry
        self._lock = lock
        self._take_state = take_state
        self._interval_s = interval_s
        self._wal_bytes = wal_bytes
        self._housekeeping = housekeeping
        self._write_lock = threading.Lock()  # one checkpoint at a time
        self.index = index  # the newest checkpoint's index (0: none)
        self.last_time = time.monotonic()
        self.last_bytes = 0  # bytes the last checkpoint wrote (they are incremental)
        self._stopped = False
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="checkpointer", daemon=True)

    def start(self) -> None:
        """Start the checkpointer thread."""
        self._thread.start()

    def is_alive(self) -> bool:
        """Whether the checkpointer thread runs."""
        return self._thread.is_alive()

    def wake(self) -> None:
        """Have the thread check now whether a checkpoint is due."""
        self._wake.set()

    def stop(self) -> None:
        """Have the thread end (without waiting: see :meth:`join`); it starts no more
        checkpoints, and one it is writing completes first."""
        self._stopped = True
        self._wake.set()

    def join(self, timeout: float = 10) -> None:
        """Wait for the thread to end after :meth:`stop`."""
        if self._thread.is_alive():
            self._thread.join(timeout=timeout)

    def wal_due(self) -> bool:
        """Whether the log since the last checkpoint is large enough for a new one."""
        return checkpoint_due(self._wal.current_bytes, self.last_bytes, self._wal_bytes)

    def interval_due(self) -> bool:
        """The periodic checkpoint, skipped while the log is small next to the state."""
        return (
            time.monotonic() - self.last_time >= self._interval_s
            and self._wal.current_bytes > 0
            and self._wal.current_bytes * 8 >= self.last_bytes
        )

    def checkpoint(self) -> int:
        """Write a checkpoint of all state now and drop the log it makes unneeded.

        The ingestion lock is held only to take the state (retained chunks by
        reference) and rotate the log; writing happens beside ingestion and writes
        only the chunks no earlier checkpoint holds. Returns the checkpoint's index.
        """
        started = time.perf_counter()  # telemetry (DASHBOARD)
        with self._write_lock:
            with self._lock:
                state = self._take_state()
                index = self._wal.rotate()
            written = self._checkpoints.save(index, state)
            self._registry.sync()  # history rows of the log about to be dropped
            kept = checkpoint.list_checkpoints(self._checkpoints.folder)
            if kept:
                self._wal.remove_before(kept[0])
            self.index = index
            self.last_time = time.monotonic()
            self.last_bytes = written
        TELEMETRY.checkpoint.observe(time.perf_counter() - started)  # telemetry (DASHBOARD)
        log.info("checkpoint %d written (%d bytes)", index, written)
        return index

    def _loop(self) -> None:
        while not self._stopped:
            self._wake.wait(timeout=1.0)
            self._wake.clear()
            if self._stopped:
                return
            if self._housekeeping is not None:
                try:
                    self._housekeeping()
                except Exception:  # the checkpointer must outlive any failure here
                    log.exception("expiring idle experiments failed")
            if self.wal_due() or self.interval_due():
                try:
                    self.checkpoint()
                except Exception:
                    log.exception("checkpoint failed; the write-ahead log keeps the data")
