"""Rebuilding the store's state on start: the newest good checkpoint, then the log.

Replay applies each logged batch through the same :class:`Ledger` path live
ingestion takes (:meth:`Ledger.admit`, :meth:`Ledger.apply`), without the caps: a
logged batch was acknowledged once and is replayed whatever the caps are now. The
producers' sequences come back with the state, so idempotency holds across restarts.

Example::

    >>> import tempfile, torch
    >>> from pathlib import Path
    >>> from rankboard.service.state.checkpoint import Checkpoints
    >>> from rankboard.service.state.wal import WriteAheadLog
    >>> tmp = tempfile.TemporaryDirectory()
    >>> wal = WriteAheadLog(Path(tmp.name) / "wal", "batch", 0.05)
    >>> ledger = Ledger(torch.device("cpu"), registry=None)
    >>> recover(ledger, Checkpoints(Path(tmp.name) / "ck"), wal, max_samples_per_batch=10)
    0
    >>> wal.close(); tmp.cleanup()
"""

from __future__ import annotations

import logging

from rankboard.protos import ingest_pb2
from rankboard.service.state.batch import decode_batch
from rankboard.service.state.checkpoint import Checkpoints
from rankboard.service.state.ingestion import Ledger
from rankboard.service.state.wal import (
    RECORD_BATCH,
    RECORD_DELETE_EXPERIMENT,
    StateLost,
    WriteAheadLog,
)

log = logging.getLogger(__name__)


def recover(
    ledger: Ledger, checkpoints: Checkpoints, wal: WriteAheadLog, max_samples_per_batch: int
) -> int:
    """Load the newest good checkpoint into the empty ``ledger`` and replay the log
    after it; return the checkpoint's index (0: none). Raise :class:`StateLost` when
    no checkpoint reads back whole and the log before the first segment was dropped."""
    loaded = checkpoints.load_latest()
    start = 0
    if loaded is not None:
        start, state = loaded
        ledger.load_state(state)
        log.info("loaded checkpoint %d: %d runs", start, len(ledger.runs))
    else:
        segments = wal.segments()
        if segments and segments[0] > 0:
            # the log before this segment was dropped because checkpoints held it:
            # replaying the rest alone would serve wrong numbers without a word
            raise StateLost(
                f"no checkpoint in {checkpoints.folder} reads back whole, and the write-ahead"
                f" log before segment {segments[0]} was dropped after checkpointing;"
                " restore the checkpoints folder from a backup, or start on an empty"
                " --data-dir"
            )
    replayed = 0
    for _, kind, payload in wal.replay(start):
        try:
            if kind == RECORD_BATCH:
                replay_batch(
                    ledger, ingest_pb2.Batch.FromString(payload), max_samples_per_batch, payload
                )
            elif kind == RECORD_DELETE_EXPERIMENT:
                ledger.delete(payload.decode())
            replayed += 1
        except Exception:
            log.exception("skipping a write-ahead log record that does not apply")
    if replayed:
        log.info("replayed %d write-ahead log records from segment %d", replayed, start)
    return start


def replay_batch(
    ledger: Ledger, msg: ingest_pb2.Batch, max_samples_per_batch: int, raw: bytes | None = None
) -> None:
    """Apply one logged batch (a duplicate is skipped, as live ingestion skips it);
    ``raw``, the record's payload, spares a copy of each column."""
    batch = decode_batch(msg, max_samples_per_batch, raw)
    admitted = ledger.admit(batch)
    if admitted is not None:
        run, new = admitted
        ledger.apply(run, batch, new)  # acknowledged once: replayed whatever the caps are now
