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
import mmap
import os
import struct
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from rankboard.service.errors import ShuttingDown
from rankboard.service.telemetry import TELEMETRY

log = logging.getLogger(__name__)

RECORD_BATCH = 1
RECORD_DELETE_EXPERIMENT = 2
_HEADER = struct.Struct("<IIB")
MAX_RECORD = 1 << 30
KINDS = (RECORD_BATCH, RECORD_DELETE_EXPERIMENT)
# crc32 of the kind byte, the start of every record's checksum (kind + payload)
_KIND_CRC = [zlib.crc32(bytes([k])) for k in range(256)]

# names a record for an operator: (producer, sequence) of a batch, None for others
Describe = Callable[[int, bytes], "tuple[str, int] | None"]


class StateLost(RuntimeError):
    """The data dir cannot be recovered exactly (the service refuses to start)."""


class LogCorrupt(StateLost):
    """Corruption the log may not repair by itself: a bad record with valid ones after it,
    a bad record in a segment that is not the last, or a missing segment.

    ``segment`` and ``offset`` locate the first bad byte; ``lost`` lists the
    ``(producer, sequence)`` of the valid batches after it (those a cut would lose),
    ``damaged`` the record at the bad offset when its payload still parses (its
    checksum failed, so it is a guess), ``other`` the count of lost records that are
    not batches (experiment deletions).
    """

    def __init__(
        self,
        why: str,
        segment: int,
        offset: int,
        lost: list[tuple[str, int]],
        damaged: tuple[str, int] | None = None,
        other: int = 0,
    ) -> None:
        self.why = why
        self.segment = segment
        self.offset = offset
        self.lost = lost
        self.damaged = damaged
        self.other = other
        parts = [f"write-ahead log segment {segment:012d}.wal, offset {offset}: {why}"]
        if damaged is not None:
            parts.append(
                f"the damaged record reads as batch {damaged[1]} of producer {damaged[0]!r}"
            )
        parts.append(
            f"{len(lost)} valid acknowledged batches follow it: {format_batches(lost)}"
            if lost
            else "no readable acknowledged batch follows it"
        )
        if other:
            parts.append(f"and {other} other records")
        parts.append(
            "nothing was changed; stop here to restore the data dir from a backup, or run"
            " `rankboard repair --data-dir <dir> --dry-run` to see what a repair keeps and loses"
        )
        super().__init__("; ".join(parts))


def format_batches(batches: list[tuple[str, int]], limit: int = 8) -> str:
    """``producer: first-last, ...`` runs of sequences, at most ``limit`` producers shown.

    >>> format_batches([("a", 1), ("a", 2), ("a", 3), ("b", 7), ("a", 5)])
    "'a' 1-3, 5; 'b' 7"
    """
    by: dict[str, list[int]] = {}
    for producer, seq in batches:
        by.setdefault(producer, []).append(seq)
    out = []
    for producer, seqs in list(by.items())[:limit]:
        seqs.sort()
        spans: list[str] = []
        lo = hi = seqs[0]
        for s in [*seqs[1:], None]:
            if s is not None and s == hi + 1:
                hi = s
                continue
            spans.append(f"{lo}" if lo == hi else f"{lo}-{hi}")
            if s is not None:
                lo = hi = s
        out.append(f"{producer!r} {', '.join(spans)}")
    if len(by) > limit:
        out.append(f"and {len(by) - limit} more producers")
    return "; ".join(out)


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
            self._cut_torn_tail(segments[-1])  # earlier segments are checked by replay
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

    @staticmethod
    def checksum(kind: int, payload: bytes) -> int:
        """The crc32 a record of ``kind`` with ``payload`` carries (see :meth:`append`).

        >>> WriteAheadLog.checksum(RECORD_BATCH, b"abc") == zlib.crc32(b"\x01abc")
        True
        """
        return zlib.crc32(payload, _KIND_CRC[kind])

    def append(self, kind: int, payload: bytes, wait: bool = True, crc: int | None = None) -> int:
        """Append one record; return its lsn, durable on return when ``wait``.

        ``crc``: the record's :meth:`checksum` when the caller took it already (the store
        takes it before its lock: a pass over the payload that needs no order).
        """
        if crc is None:
            crc = zlib.crc32(payload, _KIND_CRC[kind])
        header = _HEADER.pack(len(payload), crc, kind)
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
        """Yield ``(segment, kind, payload)`` of every record from segment ``start`` on.

        Raises :class:`LogCorrupt` (after yielding the records before it) at the first
        bad record or missing segment: replay never crosses a gap. Segment ``start``
        must exist when ``start > 0`` (a checkpoint names the segment it rotated to,
        created before the checkpoint was written).
        """
        segments = [s for s in self.segments() if s >= start]
        expected = start if start > 0 else (segments[0] if segments else 0)
        for seg in segments:
            if seg != expected:
                raise self._corrupt(expected, 0, f"segment {expected:012d}.wal is missing")
            expected += 1
            path = self._path(seg)
            end = 0
            for kind, payload, end in _read_records(path):  # noqa: B007 - end used after
                yield seg, kind, payload
            if end < path.stat().st_size:  # the last segment's torn tail was cut at open
                raise self._corrupt(seg, end, "a record fails its length or checksum check")
        if start > 0 and not segments:
            raise self._corrupt(start, 0, f"segment {start:012d}.wal is missing")

    def _corrupt(self, segment: int, offset: int, why: str) -> LogCorrupt:
        """The :class:`LogCorrupt` error of bad bytes at ``(segment, offset)``."""
        scan = scan_after(self.folder, segment, offset, self.describe)
        return LogCorrupt(why, segment, offset, scan.lost, scan.damaged, scan.other)

    def _cut_torn_tail(self, seg: int) -> None:
        """Cut the last segment's torn tail; raise :class:`LogCorrupt` if it is not one."""
        path = self._path(seg)
        good = 0
        for _, _, good in _read_records(path):  # noqa: B007 - the last end is wanted
            pass
        size = path.stat().st_size
        if good == size:
            return
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
            after = find_valid_record(data, good + 1)
        if after is not None:
            raise self._corrupt(
                seg, good, f"a bad record with a valid one after it (at offset {after})"
            )
        log.warning(
            "write-ahead log %s: cutting a torn tail of %d bytes at offset %d"
            " (no valid record after it: a write the crash interrupted, never acknowledged)",
            path.name,
            size - good,
            good,
        )
        with open(path, "r+b") as out:
            out.truncate(good)
            out.flush()
            os.fsync(out.fileno())


def _write_all(fd: int, header: bytes, payload: bytes) -> None:
    """Write ``header`` then ``payload`` at ``fd``'s end: one ``writev``, more only when
    the kernel takes part of it (a short write: then the rest, or the error it hits)."""
    size = len(header) + len(payload)
    done = os.writev(fd, (header, payload))
    while done < size:
        rest = memoryview(header + payload if done < len(header) else payload)
        start = done if done < len(header) else done - len(header)
        done += os.write(fd, rest[start:])


class AfterScan:
    """What lies after bad bytes: the batches a cut there loses (see :func:`scan_after`)."""

    def __init__(self) -> None:
        self.lost: list[tuple[str, int]] = []
        self.damaged: tuple[str, int] | None = None
        self.other = 0
        self.records = 0


def scan_after(
    folder: Path, segment: int, offset: int, describe: Describe | None = None
) -> AfterScan:
    """Every valid record after ``offset`` of ``segment`` and in the later segments.

    Past each bad stretch the scan resynchronizes on the next valid record (header,
    known kind, length inside the file and a matching crc32), so it finds what a cut at
    ``offset`` would drop. ``damaged`` is the record at ``offset`` read without its
    checksum, when its payload still describes.
    """
    out = AfterScan()
    wal_dir = Path(folder)

    def name(kind: int, payload: bytes) -> tuple[str, int] | None:
        if describe is None:
            return None
        try:
            return describe(kind, payload)
        except Exception:  # noqa: BLE001 - a record that does not parse names nothing
            return None

    def note(kind: int, payload: bytes) -> None:
        out.records += 1
        named = name(kind, payload)
        if named is None:
            out.other += 1
        else:
            out.lost.append(named)

    for seg in sorted(int(p.stem) for p in wal_dir.glob("*.wal") if p.stem.isdigit()):
        if seg < segment:
            continue
        path = wal_dir / f"{seg:012d}.wal"
        if path.stat().st_size == 0:
            continue
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
            pos: int | None = 0
            if seg == segment:
                if offset + _HEADER.size <= len(data):
                    length, _, kind = _HEADER.unpack_from(data, offset)
                    end = offset + _HEADER.size + length
                    if kind in KINDS and end <= len(data):
                        out.damaged = name(kind, bytes(data[offset + _HEADER.size : end]))
                found = find_valid_record(data, offset + 1)
                if found is None:
                    continue
                pos = found
            while pos is not None and pos < len(data):
                end = pos
                for kind, payload, end in _scan(data, pos):  # noqa: B007 - end used after
                    note(kind, payload)
                pos = find_valid_record(data, end + 1) if end < len(data) else None
    return out


def find_valid_record(data: mmap.mmap | bytes, start: int) -> int | None:
    """Offset of the first valid record at or after ``start``, or None.

    A candidate needs a known kind byte and a length that fits the file, then a
    matching crc32 (false positives: 2**-32 per candidate). Vectorized filter first,
    so a scan over a long bad stretch stays cheap.

    >>> rec = _HEADER.pack(3, zlib.crc32(b"abc", _KIND_CRC[1]), 1) + b"abc"
    >>> find_valid_record(b"junk" + rec, 0), find_valid_record(b"junk" + rec, 5)
    (4, None)
    """
    size = len(data)
    window = 1 << 22
    base = start
    while base + _HEADER.size <= size:
        hi = min(size, base + window + _HEADER.size)
        arr = np.frombuffer(data, np.uint8, count=hi - base, offset=base)
        n = len(arr) - _HEADER.size + 1
        if n <= 0:
            return None
        kinds = arr[8 : 8 + n]
        cand = np.flatnonzero(np.isin(kinds, KINDS))
        if len(cand):
            b = arr.astype(np.uint32)
            length = b[cand] | (b[cand + 1] << 8) | (b[cand + 2] << 16) | (b[cand + 3] << 24)
            ends = base + cand.astype(np.int64) + _HEADER.size + length.astype(np.int64)
            for c in cand[(length <= MAX_RECORD) & (ends <= size)]:
                pos = base + int(c)
                length_, crc, kind = _HEADER.unpack_from(data, pos)
                payload_start = pos + _HEADER.size
                if (
                    zlib.crc32(data[payload_start : payload_start + length_], _KIND_CRC[kind])
                    == crc
                ):
                    return pos
        base += n
    return None


def _read_records(path: Path) -> Iterator[tuple[int, bytes, int]]:
    """Yield ``(kind, payload, end_offset)`` up to the first torn or corrupt record."""
    size = path.stat().st_size
    if size == 0:
        return
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
        yield from _scan(data)


def _scan(data: mmap.mmap, pos: int = 0) -> Iterator[tuple[int, bytes, int]]:
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
