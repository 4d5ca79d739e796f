"""The reading side of the write-ahead log: record format, scans, corruption reports.

Each record is ``[u32 length][u32 crc32][u8 kind][payload]`` (little-endian; the CRC
covers kind and payload). This module reads segments (:func:`read_records`,
:func:`replay_segments`), finds where a torn or corrupt stretch ends
(:func:`find_valid_record`, :func:`scan_after`) and cuts a torn tail
(:func:`cut_torn_tail`); the repair rule is described in
:mod:`rankboard.service.state.wal`, which writes the log and re-exports these names.

Example::

    >>> rec = HEADER.pack(3, record_crc(RECORD_BATCH, b"abc"), RECORD_BATCH) + b"abc"
    >>> [(k, bytes(p), end) for k, p, end in scan_records(rec + b"torn")]
    [(1, b'abc', 12)]
"""

from __future__ import annotations

import logging
import mmap
import os
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rankboard.service.state.checksum import crc32

log = logging.getLogger(__name__)

RECORD_BATCH = 1
RECORD_DELETE_EXPERIMENT = 2
HEADER = struct.Struct("<IIB")  # length, crc32, kind
MAX_RECORD = 1 << 30
KINDS = (RECORD_BATCH, RECORD_DELETE_EXPERIMENT)
# crc32 of the kind byte, the start of every record's checksum (kind + payload)
KIND_CRC = [crc32(bytes([k])) for k in range(256)]

# names a record for an operator: (producer, sequence) of a batch, None for others
Describe = Callable[[int, bytes], "tuple[str, int] | None"]


class StateLost(RuntimeError):
    """The data dir cannot be recovered exactly (the service refuses to start)."""


@dataclass(eq=False)
class LogCorrupt(StateLost):
    """Corruption the log may not repair by itself: a bad record with valid ones after it,
    a bad record in a segment that is not the last, or a missing segment.

    ``segment`` and ``offset`` locate the first bad byte; ``lost`` lists the
    ``(producer, sequence)`` of the valid batches after it (those a cut would lose),
    ``damaged`` the record at the bad offset when its payload still parses (its
    checksum failed, so it is a guess), ``other`` the count of lost records that are
    not batches (experiment deletions).
    """

    why: str
    segment: int
    offset: int
    lost: list[tuple[str, int]]
    damaged: tuple[str, int] | None = None
    other: int = 0

    def __post_init__(self) -> None:
        where = f"write-ahead log segment {self.segment:012d}.wal, offset {self.offset}"
        after = (
            f"{len(self.lost)} valid acknowledged batches follow it: {format_batches(self.lost)}"
            if self.lost
            else "no readable acknowledged batch follows it"
        )
        parts = [f"{where}: {self.why}"]
        if self.damaged is not None:
            producer, sequence = self.damaged
            parts.append(f"the damaged record reads as batch {sequence} of producer {producer!r}")
        parts.append(after)
        if self.other:
            parts.append(f"and {self.other} other records")
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


def record_crc(kind: int, payload: bytes) -> int:
    """The checksum a record of ``kind`` and ``payload`` carries.

    >>> import zlib
    >>> record_crc(1, b"abc") == zlib.crc32(b"\\x01abc")
    True
    """
    return crc32(payload, KIND_CRC[kind])


def segment_path(folder: Path, index: int) -> Path:
    """The file of segment ``index`` in ``folder``.

    >>> segment_path(Path("wal"), 3).name
    '000000000003.wal'
    """
    return folder / f"{index:012d}.wal"


def list_segments(folder: Path) -> list[int]:
    """The segment indices in ``folder``, ascending."""
    return sorted(int(p.stem) for p in folder.glob("*.wal") if p.stem.isdigit())


def corrupt(
    folder: Path, segment: int, offset: int, why: str, describe: Describe | None
) -> LogCorrupt:
    """The :class:`LogCorrupt` error of bad bytes at ``(segment, offset)``."""
    scan = scan_after(folder, segment, offset, describe)
    return LogCorrupt(why, segment, offset, scan.lost, scan.damaged, scan.other)


def replay_segments(
    folder: Path, start: int, describe: Describe | None = None
) -> Iterator[tuple[int, int, bytes]]:
    """Yield ``(segment, kind, payload)`` of every record from segment ``start`` on.

    Raises :class:`LogCorrupt` (after yielding the records before it) at the first
    bad record or missing segment: replay never crosses a gap. Segment ``start``
    must exist when ``start > 0`` (a checkpoint names the segment it rotated to,
    created before the checkpoint was written).
    """
    segments = [s for s in list_segments(folder) if s >= start]
    expected = start if start > 0 else (segments[0] if segments else 0)
    for seg in segments:
        if seg != expected:
            why = f"segment {expected:012d}.wal is missing"
            raise corrupt(folder, expected, 0, why, describe)
        expected += 1
        path = segment_path(folder, seg)
        end = 0
        for kind, payload, end in read_records(path):  # noqa: B007 - end used after
            yield seg, kind, payload
        if end < path.stat().st_size:  # the last segment's torn tail was cut at open
            why = "a record fails its length or checksum check"
            raise corrupt(folder, seg, end, why, describe)
    if start > 0 and not segments:
        raise corrupt(folder, start, 0, f"segment {start:012d}.wal is missing", describe)


def cut_torn_tail(folder: Path, seg: int, describe: Describe | None = None) -> None:
    """Cut the last segment's torn tail; raise :class:`LogCorrupt` if it is not one."""
    path = segment_path(folder, seg)
    good = 0
    for _, _, good in read_records(path):  # noqa: B007 - the last end is wanted
        pass
    size = path.stat().st_size
    if good == size:
        return
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
        after = find_valid_record(data, good + 1)
    if after is not None:
        why = f"a bad record with a valid one after it (at offset {after})"
        raise corrupt(folder, seg, good, why, describe)
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

    for seg in list_segments(wal_dir):
        if seg < segment:
            continue
        path = segment_path(wal_dir, seg)
        if path.stat().st_size == 0:
            continue
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
            pos: int | None = 0
            if seg == segment:
                if offset + HEADER.size <= len(data):
                    length, _, kind = HEADER.unpack_from(data, offset)
                    end = offset + HEADER.size + length
                    if kind in KINDS and end <= len(data):
                        out.damaged = name(kind, bytes(data[offset + HEADER.size : end]))
                found = find_valid_record(data, offset + 1)
                if found is None:
                    continue
                pos = found
            while pos is not None and pos < len(data):
                end = pos
                for kind, payload, end in scan_records(data, pos):  # noqa: B007 - end used after
                    note(kind, payload)
                pos = find_valid_record(data, end + 1) if end < len(data) else None
    return out


def find_valid_record(data: mmap.mmap | bytes, start: int) -> int | None:
    """Offset of the first valid record at or after ``start``, or None.

    A candidate needs a known kind byte and a length that fits the file, then a
    matching crc32 (false positives: 2**-32 per candidate). Vectorized filter first,
    so a scan over a long bad stretch stays cheap.

    >>> rec = HEADER.pack(3, crc32(b"abc", KIND_CRC[1]), 1) + b"abc"
    >>> find_valid_record(b"junk" + rec, 0), find_valid_record(b"junk" + rec, 5)
    (4, None)
    """
    size = len(data)
    window = 1 << 22
    base = start
    while base + HEADER.size <= size:
        hi = min(size, base + window + HEADER.size)
        arr = np.frombuffer(data, np.uint8, count=hi - base, offset=base)
        n = len(arr) - HEADER.size + 1
        if n <= 0:
            return None
        kinds = arr[8 : 8 + n]
        cand = np.flatnonzero(np.isin(kinds, KINDS))
        if len(cand):
            b = arr.astype(np.uint32)
            length = b[cand] | (b[cand + 1] << 8) | (b[cand + 2] << 16) | (b[cand + 3] << 24)
            ends = base + cand.astype(np.int64) + HEADER.size + length.astype(np.int64)
            for c in cand[(length <= MAX_RECORD) & (ends <= size)]:
                pos = base + int(c)
                length_, crc, kind = HEADER.unpack_from(data, pos)
                payload_start = pos + HEADER.size
                if crc32(data[payload_start : payload_start + length_], KIND_CRC[kind]) == crc:
                    return pos
        base += n
    return None


def read_records(path: Path) -> Iterator[tuple[int, bytes, int]]:
    """Yield ``(kind, payload, end_offset)`` up to the first torn or corrupt record."""
    size = path.stat().st_size
    if size == 0:
        return
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
        yield from scan_records(data)


def scan_records(data: mmap.mmap | bytes, pos: int = 0) -> Iterator[tuple[int, bytes, int]]:
    """Yield ``(kind, payload, end_offset)`` of the records from ``pos`` up to the first
    torn or corrupt one."""
    while pos + HEADER.size <= len(data):
        length, crc, kind = HEADER.unpack_from(data, pos)
        start = pos + HEADER.size
        end = start + length
        if length > MAX_RECORD or end > len(data):
            return
        payload = data[start:end]
        if crc32(payload, KIND_CRC[kind]) != crc:
            return
        yield kind, payload, end
        pos = end
