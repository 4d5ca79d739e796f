"""A segmented write-ahead log of framed, checksummed records.

Each record is ``[u32 length][u32 crc32][u8 kind][payload]`` (little-endian;
the CRC covers kind and payload). Segments are files ``<index>.wal`` in one
folder; a checkpoint names the segment from which replay starts, and older
segments are removed once they are covered by two checkpoints.

Repair rule (as Prometheus TSDB's wlog and etcd's WAL): **only the torn tail of
the last segment is cut**, and only when no valid record follows the bad bytes (a
crash in the middle of a write leaves a prefix of one record and nothing after it).
A bad record followed by a valid one, a bad record in any earlier segment, or a
missing segment is corruption, not a torn write: opening or replaying the log then
raises :class:`LogCorrupt`, naming the segment, the offset and the batches that
would be lost, and the service refuses to start. Replay never crosses a gap. The
explicit ``rankboard repair`` command (:mod:`rankboard.service.state.repair`) cuts
the log at the first bad record and reports the lost batches.

Example::

    >>> import tempfile
    >>> tmp = tempfile.TemporaryDirectory(); d = tmp.name
    >>> wal = WriteAheadLog(d)
    >>> wal.append(RECORD_BATCH, b"hello")  # its lsn: 9 bytes of header + 5
    14
    >>> wal.close()
    >>> [(k, p) for _, k, p in WriteAheadLog(d).replay(0)]
    [(1, b'hello')]
    >>> tmp.cleanup()
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from rankboard.service.errors import ShuttingDown
from rankboard.service.state.wal_reader import (  # re-exported: the log's public names
    HEADER,
    KINDS,
    MAX_RECORD,
    RECORD_BATCH,
    RECORD_DELETE_EXPERIMENT,
    AfterScan,
    Describe,
    LogCorrupt,
    StateLost,
    cut_torn_tail,
    find_valid_record,
    format_batches,
    list_segments,
    read_records,
    record_crc,
    replay_segments,
    scan_after,
    segment_path,
)
from rankboard.service.telemetry import TELEMETRY

log = logging.getLogger(__name__)

__all__ = [
    "KINDS",
    "MAX_RECORD",
    "RECORD_BATCH",
    "RECORD_DELETE_EXPERIMENT",
    "AfterScan",
    "Describe",
    "LogCorrupt",
    "LogFailed",
    "StateLost",
    "WriteAheadLog",
    "find_valid_record",
    "format_batches",
    "read_records",
    "scan_after",
]


class LogFailed(ShuttingDown):
    """The log could not be synced: nothing more is acknowledged (clients retry later).

    As PostgreSQL learned, a failed fsync cannot be retried safely: the service stops
    taking batches and a restart replays what reached the disk.
    """


class WriteAheadLog:
    """Append-only segmented log with an fsync policy and group commit.

    ``fsync``: ``"batch"``: every record is synced before it counts as durable (a
    background thread syncs whatever has been written, so records appended
    while a sync runs share the next one: group commit); ``"interval"``: a background
    thread syncs what was written every ``interval_s`` (group commit on a timer; a
    process crash loses nothing written, a power failure at most the last interval);
    ``"none"`` leaves syncing to the OS.

    :meth:`append` returns the record's log sequence number (the log's length in bytes
    after it, counted from when the log was opened); :meth:`wait_durable` blocks until
    a number is durable under the policy. ``append(..., wait=True)``, the default, does
    both.
    """

    def __init__(
        self,
        folder: str | Path,
        fsync: str = "batch",
        interval_s: float = 0.05,
        describe: Describe | None = None,
    ) -> None:
        if fsync not in ("batch", "interval", "none"):
            raise ValueError(f"fsync policy must be batch, interval or none, not {fsync!r}")
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.fsync = fsync
        self.interval_s = interval_s
        self.describe = describe
        self._lock = threading.Lock()
        segments = self.segments()
        if segments:
            cut_torn_tail(
                self.folder, segments[-1], self.describe
            )  # earlier segments are checked by replay
        self.index = segments[-1] if segments else 0
        self._file = open(self._path(self.index), "ab")  # noqa: SIM115
        self.current_bytes = self._file.tell()
        self._sync_dir()
        self.lsn = 0  # bytes appended since open
        self._synced = 0  # every lsn up to this is durable
        self._failed: OSError | None = None
        self._closed = False
        self._durable = threading.Condition()
        # called with (durable lsn, failure or None) after every sync, from the syncing thread
        self._listeners: list[Callable[[int, OSError | None], None]] = []
        self._syncer: threading.Thread | None = None
        if fsync != "none":
            loop = self._sync_loop if fsync == "batch" else self._interval_loop
            self._syncer = threading.Thread(target=loop, name="wal-sync", daemon=True)
            self._syncer.start()

    def _path(self, index: int) -> Path:
        return segment_path(self.folder, index)

    def _sync_dir(self) -> None:
        fd = os.open(self.folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def segments(self) -> list[int]:
        """Indices of the segments on disk, ascending."""
        return list_segments(self.folder)

    @staticmethod
    def checksum(kind: int, payload: bytes) -> int:
        """The crc32 a record of ``kind`` with ``payload`` carries (see :meth:`append`).

        >>> import zlib
        >>> WriteAheadLog.checksum(RECORD_BATCH, b"abc") == zlib.crc32(b"\x01abc")
        True
        """
        return record_crc(kind, payload)

    def append(self, kind: int, payload: bytes, wait: bool = True, crc: int | None = None) -> int:
        """Append one record; return its lsn, durable on return when ``wait``.

        ``crc``: the record's :meth:`checksum` when the caller took it already (the store
        takes it before its lock: a pass over the payload that needs no order).
        """
        if crc is None:
            crc = record_crc(kind, payload)
        header = HEADER.pack(len(payload), crc, kind)
        with self._lock:
            if self._failed is not None:
                raise LogFailed(f"the write-ahead log failed earlier: {self._failed}")
            # header and payload in one writev on the file's descriptor (its buffer is
            # always empty here): one system call, the payload not copied in user space
            try:
                _write_all(self._file.fileno(), header, payload)
            except OSError as err:  # disk full, file too large, I/O error
                self._undo_partial_write(err)
                raise
            size = len(header) + len(payload)
            self.current_bytes += size
            TELEMETRY.wal_bytes.inc(size)  # telemetry (DASHBOARD)
            self.lsn += size
            lsn = self.lsn
        if self.fsync == "batch":
            with self._durable:
                self._durable.notify_all()
            if wait:
                self.wait_durable(lsn)
        return lsn

    def _undo_partial_write(self, err: OSError) -> None:
        """Cut what a failed append left of its record, so later records do not follow
        garbage (a bad record in the middle would stop the next start); if the cut
        fails too, the log takes nothing more. Called under the lock."""
        path = self._path(self.index)
        try:
            with contextlib.suppress(OSError):
                self._file.close()  # its buffer may hold the rest of the record: dropped
            os.truncate(path, self.current_bytes)
            self._file = open(path, "ab")  # noqa: SIM115
            log.error("write-ahead log append failed (%s); the partial record was cut", err)
        except OSError as cut:
            log.critical("write-ahead log append failed (%s) and cannot be undone: %s", err, cut)
            with self._durable:
                self._failed = cut
                self._durable.notify_all()

    def add_listener(self, fn: Callable[[int, OSError | None], None]) -> None:
        """Call ``fn(durable_lsn, failure)`` after each sync (asyncio front ends wait so)."""
        self._listeners.append(fn)

    def _notify(self, failure: OSError | None = None) -> None:
        for fn in list(self._listeners):
            try:
                fn(self._synced, failure)
            except Exception:  # a listener must never stop the syncer
                log.exception("write-ahead log sync listener failed")

    def is_durable(self, lsn: int) -> bool:
        """Whether the record at ``lsn`` is as durable as the policy promises."""
        return self.fsync != "batch" or self._synced >= lsn

    def wait_durable(self, lsn: int) -> None:
        """Block until ``lsn`` is durable; raise :class:`LogFailed` if it cannot be."""
        if self.fsync != "batch":
            return
        with self._durable:
            while self._synced < lsn:
                if self._failed is not None:
                    raise LogFailed(f"the write-ahead log could not be synced: {self._failed}")
                self._durable.wait()

    def _sync_loop(self) -> None:
        """Sync whatever has been written, as often as the disk allows (group commit)."""
        while True:
            with self._durable:
                while self._synced >= self.lsn and not self._closed:
                    self._durable.wait()
                if self._closed and self._synced >= self.lsn:
                    return
            if not self._sync_written():
                return

    def _interval_loop(self) -> None:
        """Sync what was written since the last sync, every ``interval_s`` (``interval``)."""
        while True:
            with self._durable:
                self._durable.wait_for(lambda: self._closed, timeout=self.interval_s)
                if self._closed:
                    return
                if self._synced >= self.lsn:
                    continue
            if not self._sync_written():
                return

    def _sync_written(self) -> bool:
        """fdatasync what has been written so far; False once the log is closed or failed.

        A failed sync is final: acks wait for durability, so none come after it.
        """
        with self._lock:
            if self._file.closed:
                return False
            target = self.lsn
            fd = os.dup(self._file.fileno())  # rotate() may close the file meanwhile
        started = time.perf_counter()  # telemetry (DASHBOARD)
        try:
            os.fdatasync(fd)
            TELEMETRY.wal_fsync.observe(time.perf_counter() - started)  # telemetry (DASHBOARD)
        except OSError as err:
            log.critical("write-ahead log sync failed: %s; no more acks", err)
            with self._durable:
                self._failed = err
                self._durable.notify_all()
            self._notify(err)
            return False
        finally:
            os.close(fd)
        self._mark_synced(target)
        return True

    def _mark_synced(self, lsn: int) -> None:
        with self._durable:
            self._synced = max(self._synced, lsn)
            self._durable.notify_all()
        self._notify()

    def sync(self) -> None:
        """Flush and fsync the current segment."""
        with self._lock:
            self._file.flush()
            os.fsync(self._file.fileno())
            lsn = self.lsn
        self._mark_synced(lsn)

    def rotate(self) -> int:
        """Start a new segment; return its index (replay of later state starts there).

        Refused once the log failed: a failed append's leftovers must stay in the last
        segment, where the next start cuts them as a torn tail.
        """
        with self._lock:
            if self._failed is not None:
                raise LogFailed(f"the write-ahead log failed earlier: {self._failed}")
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            self.index += 1
            self._file = open(self._path(self.index), "ab")  # noqa: SIM115
            self.current_bytes = 0
            lsn = self.lsn
        self._sync_dir()
        self._mark_synced(lsn)
        return self.index

    def remove_before(self, index: int) -> None:
        """Delete the segments older than ``index``."""
        for seg in self.segments():
            if seg < index:
                self._path(seg).unlink(missing_ok=True)

    def size_since(self, index: int) -> int:
        """Bytes in the segments from ``index`` on."""
        return sum(self._path(s).stat().st_size for s in self.segments() if s >= index)

    def close(self) -> None:
        """Sync and close the current segment (every record appended is then durable)."""
        with self._lock:
            if not self._file.closed:
                self._file.flush()
                os.fsync(self._file.fileno())
                self._file.close()
            lsn = self.lsn
        with self._durable:
            self._closed = True
            self._synced = max(self._synced, lsn)
            self._durable.notify_all()
        self._notify()
        if self._syncer is not None and self._syncer is not threading.current_thread():
            self._syncer.join(timeout=5)

    def replay(self, start: int) -> Iterator[tuple[int, int, bytes]]:
        """Yield ``(segment, kind, payload)`` of every record from segment ``start`` on
        (see :func:`~rankboard.service.state.wal_reader.replay_segments`)."""
        return replay_segments(self.folder, start, self.describe)


def _write_all(fd: int, header: bytes, payload: bytes) -> None:
    """Write ``header`` then ``payload`` at ``fd``'s end: one ``writev``, more only when
    the kernel takes part of it (a short write: then the rest, or the error it hits)."""
    size = len(header) + len(payload)
    done = os.writev(fd, (header, payload))
    while done < size:
        rest = memoryview(header + payload if done < len(header) else payload)
        start = done if done < len(header) else done - len(header)
        done += os.write(fd, rest[start:])
