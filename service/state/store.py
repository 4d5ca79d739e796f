"""The metric store: applies batches to runs, durably and exactly once.

Order of work for a batch, under one lock so that the log order is the apply
order: drop it as a duplicate if its producer's sequence is not above the last
applied one; check it against its run (declaration, metric inputs, caps); append
it to the write-ahead log (durable per the fsync policy); apply it; record the
producer's sequence. A rejected batch changes nothing. On start the store loads
the newest good checkpoint and replays the log after it, which rebuilds the
metric state and the producers' sequences, so idempotency holds across restarts.

Example::

    >>> import tempfile, numpy as np
    >>> from rankboard.protos import ingest_pb2
    >>> from rankboard.service.state.batch import encode_array
    >>> tmp = tempfile.TemporaryDirectory()
    >>> store = MetricStore(StoreConfig(data_dir=tmp.name))
    >>> msg = ingest_pb2.Batch(producer_id="p", sequence=1, experiment="e", arm="a",
    ...     task="ctr", phase=ingest_pb2.PHASE_EVAL, step=1,
    ...     predictions=encode_array(np.array([0.1, 0.4, 0.35, 0.8], np.float32)),
    ...     labels=encode_array(np.array([0, 0, 1, 1], np.float32)))
    >>> store.ingest(msg).samples, store.ingest(msg).duplicate
    (4, True)
    >>> store.snapshot(RunKey("e", "a", "ctr", "eval"))[0].metrics["auc"]
    0.75
    >>> store.close(); tmp.cleanup()
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from rankboard.protos import ingest_pb2
from rankboard.service.errors import NotFound, ShuttingDown
from rankboard.service.state import checkpoint
from rankboard.service.state.batch import MAX_SAMPLES_PER_BATCH, Batch, RunKey, decode_batch
from rankboard.service.state.checkpointer import Checkpointer, checkpoint_due
from rankboard.service.state.columns import SampleColumns
from rankboard.service.state.ingestion import Ledger
from rankboard.service.state.recovery import recover
from rankboard.service.state.registry import Registry
from rankboard.service.state.repair import describe_record
from rankboard.service.state.run import Run
from rankboard.service.state.snapshots import Snapshot, SnapshotCache
from rankboard.service.state.wal import (
    RECORD_BATCH,
    RECORD_DELETE_EXPERIMENT,
    StateLost,  # raised here too; defined beside the log, which raises it first
    WriteAheadLog,
)
from rankboard.service.telemetry import AckClock

__all__ = [
    "IngestResult",
    "MetricStore",
    "StateLost",
    "StoreConfig",
    "checkpoint_due",
    "default_retained_bytes_cap",
]

log = logging.getLogger(__name__)


@dataclass
class StoreConfig:
    """Settings of the store (see ``rankboard serve --help``)."""

    data_dir: str | Path = "rankboard-data"
    device: str = "cpu"
    fsync: str = "batch"
    fsync_interval_s: float = 0.05
    checkpoint_interval_s: float = 60.0
    checkpoint_wal_bytes: int = 256 << 20
    max_samples_per_run: int = 50_000_000
    max_samples_total: int = 200_000_000
    # cap on the bytes of retained per-sample state (None: half the state device's memory)
    max_retained_bytes: int | None = None
    max_samples_per_batch: int = MAX_SAMPLES_PER_BATCH
    snapshot_min_interval_s: float = 0.2
    ttl_s: float | None = None
    max_runs: int = 10_000  # runs of any phase (train runs included)


@dataclass(frozen=True)
class Prepared:
    """A batch decoded and checked, with its log record's bytes and checksum
    (:meth:`MetricStore.prepare`), ready for :meth:`MetricStore.commit`."""

    batch: Batch
    payload: bytes
    crc: int


@dataclass(frozen=True)
class IngestResult:
    """What happened to one batch."""

    sequence: int
    duplicate: bool
    samples: int
    lsn: int = 0  # the log position that must be durable before the ack


class MetricStore:
    """All runs of the service, their durability and their snapshots."""

    def __init__(self, config: StoreConfig) -> None:
        self.config = config
        self.device = torch.device(config.device)
        self.data_dir = Path(config.data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()  # the ingestion lock: log order is apply order
        self._started = time.monotonic()
        if config.max_retained_bytes is not None and config.max_retained_bytes <= 0:
            raise ValueError(f"max_retained_bytes must be > 0, got {config.max_retained_bytes}")
        self.max_retained_bytes = (
            config.max_retained_bytes
            if config.max_retained_bytes is not None
            else default_retained_bytes_cap(self.device)
        )
        self._closed = False
        self._acks = AckClock()  # telemetry: ack latency (DASHBOARD)
        self.registry = Registry(self.data_dir / "registry.sqlite")
        self._ledger = Ledger(self.device, self.registry)
        checkpoints = checkpoint.Checkpoints(self.data_dir / "checkpoints")
        self._wal = WriteAheadLog(
            self.data_dir / "wal", config.fsync, config.fsync_interval_s, describe_record
        )
        try:
            index = recover(self._ledger, checkpoints, self._wal, config.max_samples_per_batch)
        except BaseException:
            self._wal.close()
            self.registry.close()
            raise
        self.snapshots = SnapshotCache(
            self._snapshot_source, self._version_of, config.snapshot_min_interval_s
        )
        self.checkpointer = Checkpointer(
            checkpoints,
            self._wal,
            self.registry,
            self._lock,
            self._ledger.to_state,
            config.checkpoint_interval_s,
            config.checkpoint_wal_bytes,
            index,
            housekeeping=self.expire if config.ttl_s else None,
        )
        self.checkpointer.start()

    # --- ingestion -----------------------------------------------------------------
    def ingest(
        self, msg: ingest_pb2.Batch, raw: bytes | None = None, wait: bool = True
    ) -> IngestResult:
        """Apply ``msg`` once; raise a :class:`ServiceError` (and change nothing) if refused.

        ``raw`` is ``msg``'s wire form when the caller has it (logged as it is). With
        ``wait`` the batch is durable on return; without, the caller must
        :meth:`wait_durable` for ``result.lsn`` before it acknowledges the batch (the
        stream handler applies the next batch meanwhile: the log syncs in parallel).
        State changes before the sync; a crash loses both, and the producer re-sends.
        """
        result = self.commit(self.prepare(msg, raw), wait=wait)
        assert result is not None  # a blocking commit always runs
        return result

    def prepare(self, msg: ingest_pb2.Batch, raw: bytes | None = None) -> Prepared:
        """The part of :meth:`ingest` that needs no lock: decode and check ``msg``, take
        its record's bytes and checksum. Raises :class:`InvalidBatch` on bad input."""
        batch = decode_batch(msg, self.config.max_samples_per_batch, raw)
        # the record's bytes and checksum before the lock (the crc releases the GIL on
        # large payloads): under the lock only what must keep the log order the apply order
        payload = raw if raw is not None else msg.SerializeToString()
        return Prepared(batch, payload, WriteAheadLog.checksum(RECORD_BATCH, payload))

    def commit(
        self, prepared: Prepared, wait: bool = True, blocking: bool = True
    ) -> IngestResult | None:
        """Apply and log a :meth:`prepare`-d batch (see :meth:`ingest`); with
        ``blocking=False``, None (and nothing done) when the lock is held elsewhere, so
        a caller on an event loop can hand the batch to a thread instead of waiting."""
        if not self._lock.acquire(blocking=blocking):
            return None
        try:
            result = self._commit_locked(prepared)
        finally:
            self._lock.release()
        if not result.duplicate and self.checkpointer.wal_due():
            self.checkpointer.wake()
        if wait:
            self._wal.wait_durable(result.lsn)
            self._acks.done(result.lsn)  # telemetry (DASHBOARD)
        return result

    def _commit_locked(self, prepared: Prepared) -> IngestResult:
        batch = prepared.batch
        if self._closed:
            raise ShuttingDown("the service is shutting down; retry on another instance")
        ledger = self._ledger
        admitted = ledger.admit(batch)  # refusals (Run.check) change nothing
        if admitted is None:
            # the first copy may still be on its way to the disk
            return IngestResult(batch.sequence, True, 0, self._wal.lsn)
        run, new = admitted
        cfg = self.config
        ledger.check_caps(
            run,
            batch,
            cfg.max_runs,
            self.max_retained_bytes,
            cfg.max_samples_per_run,
            cfg.max_samples_total,
        )
        # applied before it is logged, all or nothing (Run.apply rolls itself back),
        # so the log holds only batches that applied: replay never meets a refusal
        last = ledger.producers.get(batch.producer_id)
        undo = run.undo_point(batch)
        ledger.apply(run, batch, new, undo)
        try:
            lsn = self._wal.append(RECORD_BATCH, prepared.payload, wait=False, crc=prepared.crc)
        except BaseException:
            ledger.unapply(run, batch, new, undo, last)
            raise
        self._acks.start(lsn)  # telemetry (DASHBOARD)
        return IngestResult(batch.sequence, False, batch.num_samples, lsn)

    def is_durable(self, lsn: int) -> bool:
        """Whether the log record at ``lsn`` is durable (see :meth:`ingest`)."""
        durable = self._wal.is_durable(lsn)
        if durable:
            self._acks.done(lsn)  # telemetry (DASHBOARD)
        return durable

    def wait_durable(self, lsn: int) -> None:
        """Block until the log record at ``lsn`` is durable."""
        self._wal.wait_durable(lsn)
        self._acks.done(lsn)  # telemetry (DASHBOARD)

    def add_sync_listener(self, fn: Callable[[int, OSError | None], None]) -> None:
        """Call ``fn(synced_lsn, failure)`` from the log's sync thread after each sync
        (see :meth:`WriteAheadLog.add_listener`)."""
        self._wal.add_listener(fn)

    def delete_experiment(self, experiment: str) -> int:
        """Delete an experiment's runs, state and history (durably); return runs removed."""
        with self._lock:
            keys = [k for k in self._ledger.runs if k.experiment == experiment]
            if not keys:
                raise NotFound(f"experiment {experiment!r} not found")
            lsn = self._wal.append(RECORD_DELETE_EXPERIMENT, experiment.encode(), wait=False)
            self._ledger.delete(experiment)
        self._wal.wait_durable(lsn)
        self.snapshots.invalidate(experiment)
        return len(keys)

    def expire(self, now: float | None = None, mono_now: float | None = None) -> list[str]:
        """Delete the experiments that received no batch for ``ttl_s`` seconds.

        Idle by both clocks: the wall clock (``updated_at``, kept across restarts) and
        the monotonic one (last batch in this process, or its start), so that a wall
        clock set forward expires nothing; after a restart an experiment lives at
        least ``ttl_s`` more. ``now``/``mono_now`` stand for the clocks' readings.
        """
        if not self.config.ttl_s:
            return []
        cutoff = (time.time() if now is None else now) - self.config.ttl_s
        mono_cutoff = (time.monotonic() if mono_now is None else mono_now) - self.config.ttl_s
        with self._lock:
            last: dict[str, float] = {}
            for run in self._ledger.runs.values():
                last[run.key.experiment] = max(last.get(run.key.experiment, 0.0), run.updated_at)
            idle = [
                e
                for e, t in last.items()
                if t < cutoff and self._ledger.touched.get(e, self._started) < mono_cutoff
            ]
        expired = []
        for experiment in idle:
            log.info("experiment %s expired (no batch for %.0f s)", experiment, self.config.ttl_s)
            try:
                self.delete_experiment(experiment)
            except NotFound:  # deleted over REST meanwhile
                continue
            expired.append(experiment)
        return expired

    # --- reading -------------------------------------------------------------------
    def runs(self) -> list[Run]:
        """All runs, sorted by key (lock-free: ``list(dict.items())`` is one C call)."""
        return [run for _, run in sorted(list(self._ledger.runs.items()), key=lambda kv: kv[0])]

    def run(self, key: RunKey) -> Run:
        """The run of ``key``; raise :class:`NotFound`.

        Lock-free, like every read on the snapshot path: a dict lookup is atomic under
        the GIL, and readers must not queue behind ingestion, which holds the lock
        almost all the time under load.
        """
        run = self._ledger.runs.get(key)
        if run is None:
            raise NotFound(self._missing_run(key))
        return run

    def _missing_run(self, key: RunKey) -> str:
        """What exists instead of ``key``: the closest level that does, named in full."""
        keys = [k for k in list(self._ledger.runs) if k.experiment == key.experiment]
        what = (
            f"no run for experiment {key.experiment!r}, arm {key.arm!r}, task {key.task!r},"
            f" phase {key.phase!r}"
        )
        if not keys:
            return f"{what}: experiment {key.experiment!r} not found"
        for level, have in (
            ("arm", sorted({k.arm for k in keys})),
            ("task", sorted({k.task for k in keys if k.arm == key.arm})),
            ("phase", sorted({k.phase for k in keys if (k.arm, k.task) == (key.arm, key.task)})),
        ):
            if getattr(key, level) not in have:
                close = [h for h in have if h.lower() == getattr(key, level).lower()]
                hint = f" (names are case-sensitive: did you mean {close[0]!r}?)" if close else ""
                return f"{what}; its {level}s are: {', '.join(have)}{hint}"
        return what

    def snapshot(
        self, key: RunKey, step: int | None = None, fresh: bool = False, wait: bool = True
    ) -> tuple[Snapshot, bool] | None:
        """The metrics of ``key`` at ``step`` (eval: latest step by default) and staleness.

        A cached snapshot is served without the store's lock (see :meth:`run`); only a
        recomputation copies state under it. Without ``wait``: None where this call would
        have to compute (see :meth:`SnapshotCache.get`).
        """
        run = self.run(key)
        if step is None:
            step = run.latest_step()  # max() over int keys: one C call, atomic
        elif key.phase == "eval" and step not in run.windows:
            raise NotFound(
                f"run {key.experiment}/{key.arm}/{key.task}/eval has no eval step {step}"
                f" (steps: {sorted(run.windows)})"
            )
        if key.phase == "train":
            step = 0
        return self.snapshots.get((key, step), fresh=fresh, wait=wait)

    def _snapshot_source(self, skey: tuple[RunKey, int]) -> tuple[dict, int, int]:
        key, step = skey
        with self._lock:
            run = self.run(key)
            metrics, samples = run.sources(step)
            return metrics, samples, run.version

    def eval_sources(self, key: RunKey, step: int) -> tuple[dict, SampleColumns | None]:
        """Copies of eval step ``step``'s metrics and sample columns, taken together under
        the lock (chunks shared, never copied), to compute statistics on without it."""
        with self._lock:
            run = self.run(key)
            metrics, _ = run.sources(step)
            return metrics, run.columns(step)

    def _version_of(self, skey: tuple[RunKey, int]) -> int:
        return self.run(skey[0]).version  # an int attribute: read without the lock

    def checkpoint(self) -> int:
        """Write a checkpoint of all state now; return its index (see :class:`Checkpointer`)."""
        return self.checkpointer.checkpoint()

    # --- accounts (read without the lock: telemetry) --------------------------------
    @property
    def producers(self) -> dict[str, int]:
        """Each producer's last applied sequence (a copy)."""
        return dict(self._ledger.producers)

    @property
    def retained_bytes(self) -> float:
        """Bytes of retained per-sample state charged to the cap."""
        return self._ledger.retained_bytes

    @property
    def fixed_bytes(self) -> float:
        """Bytes of fixed state (runs, windows, producers, segments) charged to the cap."""
        return self._ledger.fixed_bytes

    def close(self) -> None:
        """Refuse new batches, sync the log and stop the background threads."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self.checkpointer.stop()
            self._wal.close()
        self.checkpointer.join(timeout=10)
        self.snapshots.close()
        self.registry.close()


def default_retained_bytes_cap(device: torch.device) -> int:
    """Half the memory of the device that holds metric state (RAM, or the GPU's).

    >>> default_retained_bytes_cap(torch.device("cpu")) > 0
    True
    """
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory // 2
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2
