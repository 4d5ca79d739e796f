"""``rankboard repair``: cut a corrupt write-ahead log at its first bad record, explicitly.

The service never repairs corruption by itself beyond the torn tail of the last log
segment (see :mod:`rankboard.service.state.wal`); any other bad record stops the start
with an error. This command is the operator's explicit decision to go on without what
follows the bad record:

1. it finds the checkpoint a start would load (the newest that reads back whole) and
   checks every log segment from there, in order, exactly as replay does;
2. at the first bad record or missing segment it plans a cut: everything from there on
   (the rest of that segment and every later segment) is lost, since replay must never
   cross a gap (a later batch applied without an earlier one of the same producer
   would make its re-send a "duplicate");
3. it reports exactly which ``(producer, sequence)`` batches are lost. They are not
   marked applied after the repair, so producers that still hold them can re-send;
4. unless ``--dry-run``, it moves (never deletes) the cut bytes, the later segments
   and the unreadable newer checkpoints into ``<data dir>/lost/<UTC time>/`` with a
   ``report.json``, truncates the segment and syncs.

Exit status: 0 when the data dir is sound or was repaired; 1 from ``--dry-run`` when a
repair is needed; 2 when it cannot be repaired here (no readable checkpoint and the
log before the first segment was dropped: restore from a backup).

Example::

    >>> import tempfile
    >>> from rankboard.service.state.wal import RECORD_BATCH, WriteAheadLog
    >>> tmp = tempfile.TemporaryDirectory(); d = Path(tmp.name)
    >>> wal = WriteAheadLog(d / "wal")
    >>> batch = ingest_pb2.Batch(producer_id="p", sequence=1)
    >>> _ = wal.append(RECORD_BATCH, batch.SerializeToString())
    >>> wal.close()
    >>> plan_repair(d).needed
    False
    >>> tmp.cleanup()
"""

from __future__ import annotations

import argparse
import json
import logging
import mmap
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from rankboard.protos import ingest_pb2
from rankboard.service.state import checkpoint
from rankboard.service.state.wal_reader import (
    RECORD_BATCH,
    StateLost,
    find_valid_record,
    format_batches,
    read_records,
    scan_after,
)

log = logging.getLogger(__name__)


def describe_record(kind: int, payload: bytes) -> tuple[str, int] | None:
    """``(producer, sequence)`` of a logged batch; None for other records.

    >>> raw = ingest_pb2.Batch(producer_id="p", sequence=7).SerializeToString()
    >>> describe_record(RECORD_BATCH, raw)
    ('p', 7)
    """
    if kind != RECORD_BATCH:
        return None
    msg = ingest_pb2.Batch.FromString(bytes(payload))
    return msg.producer_id, int(msg.sequence)


@dataclass
class RepairPlan:
    """What ``rankboard repair`` found and would do (see :func:`plan_repair`)."""

    data_dir: Path
    checkpoint: int | None  # the checkpoint a start loads (None: replay from segment 0)
    segment: int | None = None  # where the cut goes (None: nothing to cut)
    offset: int = 0
    why: str = ""
    lost: list[tuple[str, int]] = field(default_factory=list)
    damaged: tuple[str, int] | None = None
    other: int = 0
    torn_tail_only: bool = False  # the service would cut this itself (never acknowledged)
    missing_segment: bool = False
    later_segments: list[int] = field(default_factory=list)
    stale_checkpoints: list[Path] = field(default_factory=list)
    kept: dict[str, int] = field(default_factory=dict)  # producer -> last sequence kept

    @property
    def needed(self) -> bool:
        """Whether the data dir needs a cut."""
        return self.segment is not None

    def report(self) -> str:
        """A human summary of the plan."""
        if not self.needed:
            return f"{self.data_dir}: the write-ahead log is sound; nothing to repair"
        where = f"segment {self.segment:012d}.wal offset {self.offset}"
        lines = [f"{self.data_dir}: {where}: {self.why}"]
        if self.torn_tail_only:
            lines.append("a torn tail only (never acknowledged); the service cuts it on start")
        if self.damaged is not None:
            lines.append(
                f"damaged record (checksum failed) reads as producer {self.damaged[0]!r}"
                f" sequence {self.damaged[1]}: lost"
            )
        lines.append(
            f"lost batches after it ({len(self.lost)}): {format_batches(self.lost, 1000)}"
            if self.lost
            else "no readable batch after it is lost"
        )
        if self.other:
            lines.append(f"other lost records (experiment deletions): {self.other}")
        if self.kept:
            lines.append(
                "producers resume after (last sequence kept): "
                + ", ".join(f"{p!r} {s}" for p, s in sorted(self.kept.items()))
            )
        lines.append(
            "the lost batches are not marked applied: producers that still hold them can"
            " re-send them after the repair"
        )
        return "\n".join(lines)

    def as_json(self) -> dict:
        """The plan as JSON data (``report.json``)."""
        return {
            "data_dir": str(self.data_dir),
            "checkpoint": self.checkpoint,
            "segment": self.segment,
            "offset": self.offset,
            "why": self.why,
            "torn_tail_only": self.torn_tail_only,
            "damaged": list(self.damaged) if self.damaged else None,
            "lost": [list(b) for b in self.lost],
            "other_lost_records": self.other,
            "later_segments": self.later_segments,
            "stale_checkpoints": [p.name for p in self.stale_checkpoints],
            "last_sequence_kept": self.kept,
        }


def plan_repair(data_dir: str | Path) -> RepairPlan:
    """Check ``data_dir`` as a start would and plan the cut; change nothing.

    Raises :class:`StateLost` when no checkpoint reads back and the log's start was
    already dropped (no cut can make that whole).
    """
    data_dir = Path(data_dir)
    wal_dir = data_dir / "wal"
    ckpt_dir = data_dir / "checkpoints"
    loaded = checkpoint.Checkpoints(ckpt_dir).load_latest() if ckpt_dir.exists() else None
    segments = sorted(int(p.stem) for p in wal_dir.glob("*.wal") if p.stem.isdigit())
    kept: dict[str, int] = {}
    if loaded is None:
        start = None
        if segments and segments[0] > 0:
            raise StateLost(
                f"no checkpoint in {ckpt_dir} reads back whole and the write-ahead log"
                f" before segment {segments[0]} was dropped: no cut can recover this data"
                " dir; restore the checkpoints folder from a backup"
            )
    else:
        start, state = loaded
        kept = {str(p): int(s) for p, s in dict(state["producers"]).items()}
    plan = RepairPlan(data_dir, start, kept=kept)
    if start is not None:
        plan.stale_checkpoints = [
            checkpoint.manifest_path(ckpt_dir, i)
            for i in checkpoint.list_checkpoints(ckpt_dir)
            if i > start
        ] + [
            checkpoint.chunks_path(ckpt_dir, i)
            for i in checkpoint.file_indices(ckpt_dir, "chunks")
            if i > start
        ]
    first = start or 0
    todo = [s for s in segments if s >= first]
    expected = first if start else (todo[0] if todo else 0)
    for n, seg in enumerate(todo):
        if seg != expected:
            plan.segment, plan.offset, plan.missing_segment = expected, 0, True
            plan.why = f"segment {expected:012d}.wal is missing"
            plan.later_segments = todo[n:]
            break
        expected += 1
        path = wal_dir / f"{seg:012d}.wal"
        end = 0
        for kind, payload, end in read_records(path):  # noqa: B007 - end used after
            named = describe_record(kind, payload)
            if named is not None:
                kept[named[0]] = max(kept.get(named[0], 0), named[1])
        if end < path.stat().st_size:
            plan.segment, plan.offset = seg, end
            plan.later_segments = todo[n + 1 :]
            with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
                after = find_valid_record(m, end + 1)
            if seg == todo[-1] and after is None:
                plan.torn_tail_only = True
                plan.why = "a torn tail: an interrupted write with no valid record after it"
            else:
                plan.why = "a record fails its length or checksum check"
            break
    else:
        if start and not todo:
            plan.segment, plan.offset, plan.missing_segment = start, 0, True
            plan.why = f"segment {start:012d}.wal is missing"
    if plan.needed:
        # a missing segment has no file: the scan reads every later segment whole
        assert plan.segment is not None  # a needed repair names its segment
        scan = scan_after(wal_dir, plan.segment, plan.offset, describe_record)
        plan.lost, plan.other, plan.damaged = scan.lost, scan.other, scan.damaged
    else:
        plan.stale_checkpoints = []  # sound: the newer files are simply unreadable ones
    return plan


def apply_repair(plan: RepairPlan) -> Path | None:
    """Carry out ``plan``: move what is cut to ``<data dir>/lost/<time>/``; return that folder."""
    if not plan.needed:
        return None
    data_dir = plan.data_dir
    wal_dir = data_dir / "wal"
    dest = data_dir / "lost" / time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "report.json").write_text(json.dumps(plan.as_json(), indent=1))
    seg_path = wal_dir / f"{plan.segment:012d}.wal"
    if plan.missing_segment:
        seg_path.touch()  # the segment replay starts at (empty: its records are unknown)
    else:
        with open(seg_path, "r+b") as f:
            f.seek(plan.offset)
            tail = dest / f"{plan.segment:012d}.wal.from-{plan.offset}"
            with open(tail, "wb") as out:
                shutil.copyfileobj(f, out)
                out.flush()
                os.fsync(out.fileno())
            f.truncate(plan.offset)
            f.flush()
            os.fsync(f.fileno())
    for seg in plan.later_segments:
        os.replace(wal_dir / f"{seg:012d}.wal", dest / f"{seg:012d}.wal")
    for path in plan.stale_checkpoints:
        if path.exists():
            os.replace(path, dest / path.name)
    for folder in (wal_dir, data_dir / "checkpoints", dest):
        if folder.exists():
            checkpoint.fsync_dir(folder)
    log.warning("repaired %s: cut at segment %d offset %d", data_dir, plan.segment, plan.offset)
    return dest


def add_repair_parser(sub: argparse._SubParsersAction) -> None:
    """Add the ``repair`` subcommand to the ``rankboard`` command."""
    p = sub.add_parser(
        "repair",
        help="cut a corrupt write-ahead log at its first bad record; report the lost batches",
        description=__doc__.split("\n\n")[0],
    )
    p.add_argument("--data-dir", required=True, help="the data dir of a stopped service")
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="report what would be kept and lost; change nothing (exit 1 if a repair is needed)",
    )
    p.set_defaults(func=repair_command)


def repair_command(args: argparse.Namespace) -> int:
    """Run ``rankboard repair``; print the report (exit status: see the module docs)."""
    from rankboard.service.datadir_lock import DataDirLock, StartupError

    try:
        with DataDirLock(args.data_dir):  # never under a running service
            plan = plan_repair(args.data_dir)
            print(plan.report(), flush=True)
            if args.dry_run or not plan.needed:
                return 1 if args.dry_run and plan.needed else 0
            dest = apply_repair(plan)
    except (StateLost, StartupError) as err:
        print(f"rankboard repair: {err}", flush=True)
        return 2
    print(f"repaired: the cut bytes and the report are in {dest}", flush=True)
    return 0
