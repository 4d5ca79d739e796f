"""A segmented write-ahead log of framed, checksummed records.

Each record is ``[u32 length][u32 crc32][u8 kind][payload]`` (little-endian;
the CRC covers kind and payload). Segments are files ``<index>.wal`` in one
folder; a checkpoint names the segment from which replay starts, and older
segments are removed once they are covered by two checkpoints.

A torn or corrupt tail (a crash in the middle of a write) is detected by its
length or checksum when the log is opened: the segment is truncated at the last
good record and everything after it is ignored.

Example::

    >>> import tempfile
    >>> d = tempfile.mkdtemp()
    >>> wal = WriteAheadLog(d)
    >>> wal.append(RECORD_BATCH, b"hello")  # its lsn: 9 bytes of header + 5
    14
    >>> wal.close()
    >>> [(k, p) for _, k, p in WriteAheadLog(d).replay(0)]
    [(1, b'hello')]
"""

from __future__ import annotations

import logging
import mmap
import os
import struct
import threading
import zlib
from collections.abc import Iterator
from pathlib import Path

from rankboard.service.errors import ShuttingDown

log = logging.getLogger(__name__)

RECORD_BATCH = 1
RECORD_DELETE_EXPERIMENT = 2
_HEADER = struct.Struct("<IIB")
MAX_RECORD = 1 << 30
# crc32 of the kind byte, the start of every record's checksum (kind + payload)
_KIND_CRC = [zlib.crc32(bytes([k])) for k in range(256)]


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

    def __init__(self, folder: str | Path, fsync: str = "batch", interval_s: float = 0.05) -> None:
        if fsync not in ("batch", "interval", "none"):
            raise ValueError(f"fsync policy must be batch, interval or none, not {fsync!r}")
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.fsync = fsync
        self.interval_s = interval_s
        self._lock = threading.Lock()
        segments = self.segments()
        for seg in segments:
            self._repair(self._path(seg))
        self.index = segments[-1] if segments else 0
        self._file = open(self._path(self.index), "ab")  # noqa: SIM115
        self.current_bytes = self._file.tell()
        self._sync_dir()
        self.lsn = 0  # bytes appended since open
        self._synced = 0  # every lsn up to this is durable
        self._failed: OSError | None = None
        self._closed = False
        self._durable = threading.Condition()
        self._syncer: threading.Thread | None = None
        if fsync != "none":
            loop = self._sync_loop if fsync == "batch" else self._interval_loop
            self._syncer = threading.Thread(target=loop, name="wal-sync", daemon=True)
            self._syncer.start()

    def _path(self, index: int) -> Path:
        return self.folder / f"{index:012d}.wal"

    def _sync_dir(self) -> None:
        fd = os.open(self.folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def segments(self) -> list[int]:
        """Indices of the segments on disk, ascending."""
        return sorted(int(p.stem) for p in self.folder.glob("*.wal") if p.stem.isdigit())

    def append(self, kind: int, payload: bytes, wait: bool = True) -> int:
        """Append one record; return its lsn, durable on return when ``wait``."""
        header = _HEADER.pack(len(payload), zlib.crc32(payload, _KIND_CRC[kind]), kind)
        with self._lock:
            if self._failed is not None:
                raise LogFailed(f"the write-ahead log failed earlier: {self._failed}")
            # header and payload as two writes: a large payload bypasses the buffer uncopied
            self._file.write(header)
            self._file.write(payload)
            self._file.flush()
            size = len(header) + len(payload)
            self.current_bytes += size
            self.lsn += size
            lsn = self.lsn
        if self.fsync == "batch":
            with self._durable:
                self._durable.notify_all()
            if wait:
                self.wait_durable(lsn)
        return lsn

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
        try:
            os.fdatasync(fd)
        except OSError as err:
            log.critical("write-ahead log sync failed: %s; no more acks", err)
            with self._durable:
                self._failed = err
                self._durable.notify_all()
            return False
        finally:
            os.close(fd)
        self._mark_synced(target)
        return True

    def _mark_synced(self, lsn: int) -> None:
        with self._durable:
            self._synced = max(self._synced, lsn)
            self._durable.notify_all()

    def sync(self) -> None:
        """Flush and fsync the current segment."""
        with self._lock:
            self._file.flush()
            os.fsync(self._file.fileno())
            lsn = self.lsn
        self._mark_synced(lsn)

    def rotate(self) -> int:
        """Start a new segment; return its index (replay of later state starts there)."""
        with self._lock:
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
        if self._syncer is not None and self._syncer is not threading.current_thread():
            self._syncer.join(timeout=5)

    def replay(self, start: int) -> Iterator[tuple[int, int, bytes]]:
        """Yield ``(segment, kind, payload)`` of every good record from segment ``start``."""
        for seg in self.segments():
            if seg < start:
                continue
            for kind, payload, _ in _read_records(self._path(seg)):
                yield seg, kind, payload

    def _repair(self, path: Path) -> None:
        good = 0
        for _, _, end in _read_records(path):
            good = end
        size = path.stat().st_size
        if good < size:
            log.warning(
                "write-ahead log %s: cutting a torn or corrupt tail of %d bytes at %d",
                path.name,
                size - good,
                good,
            )
            with open(path, "r+b") as f:
                f.truncate(good)
                f.flush()
                os.fsync(f.fileno())


def _read_records(path: Path) -> Iterator[tuple[int, bytes, int]]:
    """Yield ``(kind, payload, end_offset)`` up to the first torn or corrupt record."""
    size = path.stat().st_size
    if size == 0:
        return
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
        yield from _scan(data)


def _scan(data: mmap.mmap) -> Iterator[tuple[int, bytes, int]]:
    pos = 0
    while pos + _HEADER.size <= len(data):
        length, crc, kind = _HEADER.unpack_from(data, pos)
        start = pos + _HEADER.size
        end = start + length
        if length > MAX_RECORD or end > len(data):
            return
        payload = data[start:end]
        if zlib.crc32(payload, _KIND_CRC[kind]) != crc:
            return
        yield kind, payload, end
        pos = end
