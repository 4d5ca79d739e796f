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
from rankboard.service.errors import CapacityExceeded, NotFound, ShuttingDown
from rankboard.service.state import caps, checkpoint
from rankboard.service.state.batch import MAX_SAMPLES_PER_BATCH, Batch, RunKey, decode_batch
from rankboard.service.state.columns import SampleColumns
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
from rankboard.service.telemetry import TELEMETRY, AckClock

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
        self._lock = threading.RLock()
        self._runs: dict[RunKey, Run] = {}
        self._producers: dict[str, int] = {}
        self._retained = 0
        self._retained_bytes = 0.0
        # fixed state charged to the same cap: runs, windows, producer entries (caps.py)
        self._fixed_bytes = 0.0
        self._producer_runs: dict[str, set[RunKey]] = {}  # producers expire with their runs
        self._last_charge: tuple[Batch | None, float, float] = (None, 0.0, 0.0)
        self._segment_bytes: dict[RunKey, float] = {}  # per-update overhead charged a run
        # TTL also on the monotonic clock: a wall clock set forward expires nothing
        self._touched: dict[str, float] = {}  # experiment -> monotonic time of its last batch
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
        self._ckpt_dir = self.data_dir / "checkpoints"
        self._checkpoints = checkpoint.Checkpoints(self._ckpt_dir)
        self._ckpt_lock = threading.Lock()  # one checkpoint at a time
        self._wal = WriteAheadLog(
            self.data_dir / "wal", config.fsync, config.fsync_interval_s, describe_record
        )
        try:
            self._ckpt_index = self._recover()
        except BaseException:
            self._wal.close()
            self.registry.close()
            raise
        self._last_ckpt_time = time.monotonic()
        self._last_ckpt_bytes = 0  # bytes the last checkpoint wrote (they are incremental)
        self.snapshots = SnapshotCache(
            self._snapshot_source, self._version_of, config.snapshot_min_interval_s
        )
        self._ckpt_wake = threading.Event()
        self._ckpt_thread = threading.Thread(
            target=self._checkpoint_loop, name="checkpointer", daemon=True
        )
        self._ckpt_thread.start()

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
        batch = decode_batch(msg, self.config.max_samples_per_batch)
        # the record's bytes and checksum before the lock (zlib releases the GIL on large
        # payloads): under the lock only what must keep the log order the apply order
        payload = raw if raw is not None else msg.SerializeToString()
        crc = WriteAheadLog.checksum(RECORD_BATCH, payload)
        with self._lock:
            if self._closed:
                raise ShuttingDown("the service is shutting down; retry on another instance")
            last = self._producers.get(batch.producer_id)
            if last is not None and batch.sequence <= last:
                # the first copy may still be on its way to the disk
                result = IngestResult(batch.sequence, True, 0, self._wal.lsn)
            else:
                run = self._runs.get(batch.key)
                new = run is None
                if run is None:
                    run = Run.create(batch, self.device)
                run.check(batch)  # against the state it will update: refusals change nothing
                self._check_caps(run, batch)
                # applied before it is logged, all or nothing (Run.apply rolls itself back),
                # so the log holds only batches that applied: replay never meets a refusal
                undo = run.undo_point(batch)
                self._apply(run, batch, new, undo)
                try:
                    lsn = self._wal.append(RECORD_BATCH, payload, wait=False, crc=crc)
                except BaseException:
                    self._unapply(run, batch, new, undo, last)
                    raise
                result = IngestResult(batch.sequence, False, batch.num_samples, lsn)
                self._acks.start(lsn)  # telemetry (DASHBOARD)
        if not result.duplicate and self._wal_due():
            self._ckpt_wake.set()
        if wait:
            self._wal.wait_durable(result.lsn)
            self._acks.done(result.lsn)  # telemetry (DASHBOARD)
        return result

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

    def _charge(self, run: Run, batch: Batch, new: bool) -> tuple[float, float]:
        """Fixed bytes applying ``batch`` adds: a new run, new windows, a new producer,
        and (second) its segments' per-update overhead."""
        steps = [p.step for p in batch.split()]
        charge = caps.window_cost(run) if new else 0
        charge += caps.window_cost(run) * caps.new_windows(run, steps)
        if batch.producer_id not in self._producers:
            charge += caps.producer_cost(batch.producer_id)
        return float(charge), float(len(steps) * caps.segment_cost(run, batch))

    def _check_caps(self, run: Run, batch: Batch) -> None:
        new = run.key not in self._runs
        if new and len(self._runs) >= self.config.max_runs:
            raise CapacityExceeded(
                f"the service holds {len(self._runs)} runs, its cap"
                " (rankboard serve --max-runs); delete old experiments to free room"
            )
        n = batch.num_samples if run.key.phase == "eval" else 0
        more = n * run.cost_per_sample(batch) + sum(self._charge(run, batch, new))
        held = self._retained_bytes + self._fixed_bytes
        if held + more > self.max_retained_bytes:
            raise CapacityExceeded(
                f"the service would hold {(held + more) / 2**20:.1f} MiB of metric state"
                f" ({run.bytes_per_sample or 0:g} bytes a sample in this run,"
                f" {caps.window_cost(run)} bytes a step window), over its cap of"
                f" {self.max_retained_bytes / 2**20:.1f} MiB"
                " (rankboard serve --max-retained-mb); delete old experiments to free room"
            )
        if run.key.phase != "eval":
            return
        if run.samples + n > self.config.max_samples_per_run:
            raise CapacityExceeded(
                f"run {'/'.join(run.key.__dict__.values())} would hold {run.samples + n} samples,"
                f" over the cap of {self.config.max_samples_per_run} per run"
                " (rankboard serve --max-samples-per-run); delete old experiments to free room"
            )
        if self._retained + n > self.config.max_samples_total:
            raise CapacityExceeded(
                f"the service would retain {self._retained + n} eval samples, over its cap of"
                f" {self.config.max_samples_total} (rankboard serve --max-samples-total)"
            )

    def _apply(self, run: Run, batch: Batch, new: bool, undo: dict | None = None) -> None:
        charge, segments = self._charge(run, batch, new)
        points = run.apply(batch, undo)  # all or nothing: a failure leaves no trace here
        if new:
            self._runs[run.key] = run
            self.registry.register_run(_tuple(run.key), run.declaration, run.label_kind)
        if run.key.phase == "eval":
            self._retained += batch.num_samples
            self._retained_bytes += batch.num_samples * run.cost_per_sample(batch)
        self._fixed_bytes += charge + segments
        self._segment_bytes[run.key] = self._segment_bytes.get(run.key, 0.0) + segments
        self._last_charge = (batch, charge, segments)
        if points:
            self.registry.record_many(_tuple(run.key), points)
        self._producers[batch.producer_id] = batch.sequence
        self._producer_runs.setdefault(batch.producer_id, set()).add(run.key)
        self._touched[run.key.experiment] = time.monotonic()

    def _unapply(self, run: Run, batch: Batch, new: bool, undo: dict, last: int | None) -> None:
        """Undo :meth:`_apply` of a batch that could not be logged."""
        run.rollback(undo)
        if run.key.phase == "eval":
            self._retained -= batch.num_samples
            self._retained_bytes -= batch.num_samples * run.cost_per_sample(batch)
        if new:
            self._runs.pop(run.key, None)
        if self._last_charge[0] is batch:  # RELIABILITY: the fixed-state account too
            self._fixed_bytes -= self._last_charge[1] + self._last_charge[2]
            self._segment_bytes[run.key] = (
                self._segment_bytes.get(run.key, 0.0) - self._last_charge[2]
            )
            runs = self._producer_runs.get(batch.producer_id, set())
            if new:
                runs.discard(run.key)
            if last is None:
                self._producer_runs.pop(batch.producer_id, None)
        if last is None:
            self._producers.pop(batch.producer_id, None)
        else:
            self._producers[batch.producer_id] = last

    def delete_experiment(self, experiment: str) -> int:
        """Delete an experiment's runs, state and history (durably); return runs removed."""
        with self._lock:
            keys = [k for k in self._runs if k.experiment == experiment]
            if not keys:
                raise NotFound(f"experiment {experiment!r} not found")
            lsn = self._wal.append(RECORD_DELETE_EXPERIMENT, experiment.encode(), wait=False)
            self._delete(experiment)
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
            for run in self._runs.values():
                last[run.key.experiment] = max(last.get(run.key.experiment, 0.0), run.updated_at)
            idle = [
                e
                for e, t in last.items()
                if t < cutoff and self._touched.get(e, self._started) < mono_cutoff
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

    def _delete(self, experiment: str) -> None:
        """Drop an experiment's runs and the producers that wrote to no other run.

        A producer's exactly-once entry lives as long as a run it wrote to: once the
        last one is deleted (or expired) the producer is forgotten, and a batch it
        re-sends later counts as new. Exactly-once thus holds for live producers only.
        """
        gone = set()
        for key in [k for k in self._runs if k.experiment == experiment]:
            run = self._runs.pop(key)
            gone.add(key)
            self._fixed_bytes -= caps.run_state_bytes(run) + self._segment_bytes.pop(key, 0.0)
            if key.phase == "eval":
                self._retained -= run.samples
                self._retained_bytes -= run.retained_bytes
        for producer in list(self._producer_runs):
            runs = self._producer_runs[producer]
            runs -= gone
            if not runs:
                del self._producer_runs[producer]
                if self._producers.pop(producer, None) is not None:
                    self._fixed_bytes -= caps.producer_cost(producer)
        self._touched.pop(experiment, None)
        self.registry.delete_experiment(experiment)

    # --- reading -------------------------------------------------------------------
    def runs(self) -> list[Run]:
        """All runs, sorted by key (lock-free: ``list(dict.items())`` is one C call)."""
        return [run for _, run in sorted(list(self._runs.items()), key=lambda kv: kv[0])]

    def run(self, key: RunKey) -> Run:
        """The run of ``key``; raise :class:`NotFound`.

        Lock-free, like every read on the snapshot path: a dict lookup is atomic under
        the GIL, and readers must not queue behind ingestion, which holds the lock
        almost all the time under load.
        """
        run = self._runs.get(key)
        if run is None:
            raise NotFound(self._missing_run(key))
        return run

    def _missing_run(self, key: RunKey) -> str:
        """What exists instead of ``key``: the closest level that does, named in full."""
        keys = [k for k in list(self._runs) if k.experiment == key.experiment]
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

    def _recover(self) -> int:
        loaded = self._checkpoints.load_latest()
        start = 0
        if loaded is not None:
            start, state = loaded
            self._producers = dict(state["producers"])
            # older checkpoints do not say which runs a producer wrote to (no
            # "producer_runs"):
            # those producers are kept (never expire)
            self._producer_runs = {
                p: {RunKey(*k) for k in keys} for p, keys in state.get("producer_runs", {}).items()
            }
            self._fixed_bytes = float(sum(caps.producer_cost(p) for p in self._producers))
            self._segment_bytes = {RunKey(*k): float(v) for k, v in state.get("segment_bytes", [])}
            self._fixed_bytes += sum(self._segment_bytes.values())
            for run_state in state["runs"]:
                run = Run.from_state(run_state, self.device)
                self._runs[run.key] = run
                self._fixed_bytes += caps.run_state_bytes(run)
                if run.key.phase == "eval":
                    self._retained += run.samples
                    self._retained_bytes += run.retained_bytes
            log.info("loaded checkpoint %d: %d runs", start, len(self._runs))
        else:
            segments = self._wal.segments()
            if segments and segments[0] > 0:
                # the log before this segment was dropped because checkpoints held it:
                # replaying the rest alone would serve wrong numbers without a word
                raise StateLost(
                    f"no checkpoint in {self._ckpt_dir} reads back whole, and the write-ahead"
                    f" log before segment {segments[0]} was dropped after checkpointing;"
                    " restore the checkpoints folder from a backup, or start on an empty"
                    " --data-dir"
                )
        replayed = 0
        for _, kind, payload in self._wal.replay(start):
            try:
                if kind == RECORD_BATCH:
                    self._replay_batch(ingest_pb2.Batch.FromString(payload))
                elif kind == RECORD_DELETE_EXPERIMENT:
                    self._delete(payload.decode())
                replayed += 1
            except Exception:
                log.exception("skipping a write-ahead log record that does not apply")
        if replayed:
            log.info("replayed %d write-ahead log records from segment %d", replayed, start)
        return start

    def _replay_batch(self, msg: ingest_pb2.Batch) -> None:
        batch = decode_batch(msg, self.config.max_samples_per_batch)
        last = self._producers.get(batch.producer_id)
        if last is not None and batch.sequence <= last:
            return
        run = self._runs.get(batch.key)
        new = run is None
        if run is None:
            run = Run.create(batch, self.device)
        run.check(batch)
        self._apply(run, batch, new)  # acknowledged once: replayed whatever the caps are now

    def _wal_due(self) -> bool:
        return checkpoint_due(
            self._wal.current_bytes, self._last_ckpt_bytes, self.config.checkpoint_wal_bytes
        )

    def _interval_due(self) -> bool:
        """The periodic checkpoint, skipped while the log is small next to the state."""
        return (
            time.monotonic() - self._last_ckpt_time >= self.config.checkpoint_interval_s
            and self._wal.current_bytes > 0
            and self._wal.current_bytes * 8 >= self._last_ckpt_bytes
        )

    def checkpoint(self) -> int:
        """Write a checkpoint of all state now and drop the log it makes unneeded.

        The ingestion lock is held only to take the state (retained chunks by
        reference) and rotate the log; writing happens beside ingestion and writes
        only the chunks no earlier checkpoint holds. Returns the checkpoint's index.
        """
        started = time.perf_counter()  # telemetry (DASHBOARD)
        with self._ckpt_lock:
            with self._lock:
                state = {
                    "format": 2,
                    "producers": dict(self._producers),
                    "segment_bytes": [(_tuple(k), v) for k, v in self._segment_bytes.items()],
                    "producer_runs": {
                        p: sorted(_tuple(k) for k in ks) for p, ks in self._producer_runs.items()
                    },
                    "runs": [run.to_state() for run in self._runs.values()],
                }
                index = self._wal.rotate()
            written = self._checkpoints.save(index, state)
            self.registry.sync()  # history rows of the log about to be dropped
            kept = checkpoint.list_checkpoints(self._ckpt_dir)
            if kept:
                self._wal.remove_before(kept[0])
            self._ckpt_index = index
            self._last_ckpt_time = time.monotonic()
            self._last_ckpt_bytes = written
        TELEMETRY.checkpoint.observe(time.perf_counter() - started)  # telemetry (DASHBOARD)
        log.info("checkpoint %d written (%d bytes)", index, written)
        return index

    def _checkpoint_loop(self) -> None:
        while not self._closed:
            self._ckpt_wake.wait(timeout=1.0)
            self._ckpt_wake.clear()
            if self._closed:
                return
            if self.config.ttl_s:
                try:
                    self.expire()
                except Exception:  # the checkpointer must outlive any failure here
                    log.exception("expiring idle experiments failed")
            if self._wal_due() or self._interval_due():
                try:
                    self.checkpoint()
                except Exception:
                    log.exception("checkpoint failed; the write-ahead log keeps the data")

    def close(self) -> None:
        """Refuse new batches, sync the log and stop the background threads."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._wal.close()
        self._ckpt_wake.set()
        self._ckpt_thread.join(timeout=10)
        self.snapshots.close()
        self.registry.close()


def checkpoint_due(log_bytes: int, last_written: int, min_bytes: int) -> bool:
    """Whether the log since the last checkpoint calls for a new one.

    Due once the log reaches ``min_bytes`` and what the last checkpoint wrote: writing
    checkpoints then costs at most about as much I/O as the log itself.

    >>> checkpoint_due(300 << 20, 0, 256 << 20), checkpoint_due(300 << 20, 1 << 30, 256 << 20)
    (True, False)
    """
    return log_bytes >= max(min_bytes, last_written)


def _tuple(key: RunKey) -> tuple[str, str, str, str]:
    return (key.experiment, key.arm, key.task, key.phase)


def default_retained_bytes_cap(device: torch.device) -> int:
    """Half the memory of the device that holds metric state (RAM, or the GPU's).

    >>> default_retained_bytes_cap(torch.device("cpu")) > 0
    True
    """
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory // 2
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2
