"""Stream predictions and labels from a training loop to the rankboard service.

:class:`MetricsStream` is what a training loop calls once per step (and once per
eval batch). :meth:`MetricsStream.log` returns at once: the tensors are detached
and copied off the device (on a side CUDA stream for GPU tensors, a plain copy
on the CPU) and queued; a background thread batches, encodes and sends them over
the bidirectional ``rankboard.v1.Ingest/Stream`` call, and a second thread per
connection reads the acknowledgements.

Delivery, memory and errors
---------------------------
* **Idempotent producer.** Each stream is one producer, ``producer_id =
  "<run id>/rank<k>"``; every batch gets the next sequence number. Batches are
  kept until the service acknowledges them; after a reconnect every
  unacknowledged batch is sent again, in order, and the service's idempotency
  (sequence <= last applied of the producer -> ``duplicate``) keeps a batch
  from counting twice. Sequences start from the wall clock in microseconds,
  so a restarted trainer that reuses its producer id still moves forward.
* **Bounded memory; an outage does not stop training.** Queued records plus
  unacknowledged batches hold at most ``max_pending_samples`` samples in
  memory (about 20 bytes each). When the service is away or slower than
  training, ``when_full`` decides:

  - ``"spill"`` (the default): the oldest unacknowledged batches, already
    numbered, are written to a local spill file (in ``spill_dir``, default the
    system temp folder) and their memory freed, so :meth:`~MetricsStream.log`
    returns at once and training goes on. A warning says so (with the file and
    the count) when spilling starts and when the spilled batches are through.
    Spilled batches are re-sent from the file, in sequence order with their
    own sequence numbers, once the service is back, so nothing is lost or
    counted twice; :meth:`~MetricsStream.flush` waits for them too. Past
    ``max_spill_bytes`` on disk, ``log()`` blocks as with ``"block"``. The
    file is removed when empty and at :meth:`~MetricsStream.close` (what it
    still holds then is reported as never acknowledged).
  - ``"block"``: :meth:`~MetricsStream.log` waits for acknowledgements.
  - ``"drop"``: the new record is dropped and counted in
    :attr:`StreamStats.dropped_records` / ``dropped_samples`` (logged as a
    warning, and reported again by :meth:`~MetricsStream.close`).
* **Reconnects.** A broken stream is reopened after an exponential backoff
  with jitter (``backoff_initial`` doubling up to ``backoff_max``; the delay is
  drawn uniformly in [b/2, b]); the backoff resets once a stream gets an ack.
  ``UNAUTHENTICATED``, ``PERMISSION_DENIED`` and ``UNIMPLEMENTED`` are not
  retried: they make the stream fail, and :meth:`~MetricsStream.flush`,
  :meth:`~MetricsStream.close` and the next :meth:`~MetricsStream.log` raise
  :class:`MetricsStreamError`.
* **Rejected batches.** A batch the service refuses (``Ack.error_code != 0``)
  is not retried; it is counted in :attr:`StreamStats.rejected_batches`, kept
  as :attr:`StreamStats.last_error`, passed to ``on_rejected`` if given, and
  the next :meth:`~MetricsStream.flush` (or :meth:`~MetricsStream.close`)
  raises :class:`RejectedBatchesError` listing them with the service's
  messages (unless ``raise_on_rejected=False``).

Batching: consecutive records of the same (task, phase) and columns are sent as
one batch of at most ``max_batch_samples`` samples. A batch that holds several
steps carries one ``StepSegment`` per step, and the service applies each
segment as its own update, so each training step stays one update of the
service's decayed metrics however records are batched. The sender lingers up to
``linger`` seconds after a record is queued for more to join it (as Kafka's
``linger.ms``), unless a batch is full, :meth:`~MetricsStream.flush` or
:meth:`~MetricsStream.close` waits, or half the memory bound is in use: one
message per few training steps instead of one per step is what keeps the
client's CPU cost per step small.

Example (needs a running service, hence skipped in doctests)::

    >>> from rankboard.trainer.client import MetricsStream
    >>> with MetricsStream("127.0.0.1:50051", experiment="exp1", arm="control",
    ...                    metrics={("ctr", "eval"): 'metrics { auc { thresholds: 0 } }'}
    ...                    ) as stream:  # doctest: +SKIP
    ...     stream.log(probs, clicks, task="ctr", phase="train", step=step)
    ...     stream.log(probs, clicks, task="ctr", phase="eval", step=step,
    ...                grouping_keys={"user": user_ids})
    ...     stream.flush()          # every ack received, or RejectedBatchesError
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import random
import tempfile
import threading
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import grpc
import numpy as np
import torch

from rankboard.protos import ingest_pb2, ingest_pb2_grpc
from rankboard.protos.wire import PHASE_NAMES, MetricList, encode_array, parse_metrics, phase_code

logger = logging.getLogger(__name__)

__all__ = [
    "FlushTimeout",
    "MetricsStream",
    "MetricsStreamError",
    "RejectedBatchesError",
    "Rejection",
    "StreamStats",
    "default_rank",
    "default_run_id",
    "parse_metrics",
]

_FATAL_CODES = {
    grpc.StatusCode.UNAUTHENTICATED,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.UNIMPLEMENTED,
}
_CODE_NAMES = {code.value[0]: code.name for code in grpc.StatusCode}
_DEFAULT_CHANNEL_OPTIONS: tuple[tuple[str, Any], ...] = (
    # grpc's own reconnect backoff starts at 1 s and grows to 120 s; keep it
    # short so that our backoff (which the caller configures) is what counts.
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 2000),
    # no transparent retries inside grpc: a stream cut by a server's shutdown before
    # its first message was seen could hang in a retry that never completes; our own
    # reconnect + re-send of unacknowledged batches is what recovers a broken stream
    ("grpc.enable_retries", 0),
    ("grpc.max_send_message_length", 64 << 20),
    ("grpc.max_receive_message_length", 64 << 20),
)


class MetricsStreamError(RuntimeError):
    """The stream cannot deliver: authentication failed, closed, or a fatal gRPC error."""


class FlushTimeout(MetricsStreamError, TimeoutError):
    """:meth:`MetricsStream.flush` ran out of time with samples still unacknowledged."""


@dataclass(frozen=True)
class Rejection:
    """A batch the service refused; it changed nothing on the service.

    >>> r = Rejection(sequence=7, task="ctr", phase="eval", step=3, samples=10,
    ...               code=3, message="labels must be 0 or 1")
    >>> str(r)
    'batch 7 (task ctr, eval, step 3, 10 samples): INVALID_ARGUMENT: labels must be 0 or 1'
    """

    sequence: int
    task: str
    phase: str
    step: int
    samples: int
    code: int
    message: str

    @property
    def code_name(self) -> str:
        """The gRPC status name of :attr:`code` (``INVALID_ARGUMENT``, ...)."""
        return _CODE_NAMES.get(self.code, str(self.code))

    def __str__(self) -> str:
        return (
            f"batch {self.sequence} (task {self.task}, {self.phase}, step {self.step}, "
            f"{self.samples} samples): {self.code_name}: {self.message}"
        )


class RejectedBatchesError(MetricsStreamError):
    """Raised by :meth:`MetricsStream.flush` when the service refused batches.

    >>> err = RejectedBatchesError([Rejection(1, "ctr", "eval", 0, 5, 9, "metrics differ")])
    >>> print(err)
    the rankboard service rejected 1 batch:
      batch 1 (task ctr, eval, step 0, 5 samples): FAILED_PRECONDITION: metrics differ
    """

    def __init__(self, rejections: Sequence[Rejection], more: int = 0) -> None:
        self.rejections = list(rejections)
        total = len(self.rejections) + more
        lines = [f"the rankboard service rejected {total} batch{'es' if total != 1 else ''}:"]
        lines += [f"  {r}" for r in self.rejections]
        if more:
            lines.append(f"  ... and {more} more")
        super().__init__("\n".join(lines))


@dataclass(frozen=True)
class StreamStats:
    """Counters of a :class:`MetricsStream` (a snapshot; see :attr:`MetricsStream.stats`)."""

    producer_id: str
    logged_records: int = 0
    logged_samples: int = 0
    dropped_records: int = 0
    dropped_samples: int = 0
    spilled_batches: int = 0
    spilled_samples: int = 0
    spill_bytes: int = 0
    sent_batches: int = 0
    resent_batches: int = 0
    acked_batches: int = 0
    applied_samples: int = 0
    duplicate_batches: int = 0
    rejected_batches: int = 0
    rejected_samples: int = 0
    reconnects: int = 0
    pending_samples: int = 0
    queued_records: int = 0
    unacked_batches: int = 0
    connected: bool = False
    last_error: str | None = None


@dataclass
class _Record:
    task: str
    phase: str
    step: int
    predictions: torch.Tensor
    labels: torch.Tensor
    weights: torch.Tensor | None
    keys: dict[str, torch.Tensor]
    num_classes: int
    n: int
    event: Any = None  # a torch.cuda.Event when copied on a side stream
    queued_at: float = field(default_factory=time.monotonic)
    sample_ids: torch.Tensor | None = None

    @property
    def shape_key(self) -> tuple[Any, ...]:
        """Records with equal keys can share a batch (the step may differ)."""
        return (
            self.task,
            self.phase,
            self.num_classes,
            self.weights is not None,
            tuple(self.keys),
            self.sample_ids is not None,
        )


@dataclass
class _Pending:
    """An unacknowledged batch: in memory, or spilled (``batch`` None, ``spill`` set)."""

    batch: ingest_pb2.Batch | None
    samples: int
    sends: int = 0
    sequence: int = 0
    meta: tuple[str, int, int] = ("", 0, 0)  # task, phase, step (for a rejection)
    spill: tuple[int, int] | None = None  # (offset, length) in the spill file


class _SpillFile:
    """Append-only file of serialized batches; read back by offset (``os.pread``)."""

    def __init__(self, folder: str | None, producer_id: str) -> None:
        safe = "".join(c if c.isalnum() else "-" for c in producer_id)[:40]
        fd, self.path = tempfile.mkstemp(prefix=f"rankboard-spill-{safe}-", dir=folder)
        self._fd = fd
        self.size = 0

    def append(self, data: bytes) -> tuple[int, int]:
        offset = self.size
        os.pwrite(self._fd, data, offset)
        self.size += len(data)
        return offset, len(data)

    def read(self, where: tuple[int, int]) -> bytes:
        return os.pread(self._fd, where[1], where[0])

    def remove(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)


@dataclass
class _Connection:
    """One bidi stream: a request queue feeding grpc and the call's ack iterator."""

    requests: queue.SimpleQueue = field(default_factory=queue.SimpleQueue)
    call: Any = None
    reader: threading.Thread | None = None
    started: float = field(default_factory=time.monotonic)
    acks: int = 0
    last_ack: float = field(default_factory=time.monotonic)
    broken: bool = False
    closing: bool = False
    error: str | None = None

    load: Callable[[_Pending], ingest_pb2.Batch | None] | None = None

    def request_iter(self) -> Iterator[ingest_pb2.Batch]:
        while True:
            item = self.requests.get()
            if item is None:
                return
            if isinstance(item, _Pending):  # spilled meanwhile: read back from the file
                item = item.batch if item.batch is not None else self.load(item)
                if item is None:  # acknowledged meanwhile
                    continue
            yield item


def default_run_id() -> str:
    """The run id shared by the ranks of one job.

    ``RANKBOARD_RUN_ID`` if set, else torchrun's ``TORCHELASTIC_RUN_ID`` (when it
    is not the placeholder ``none``), else a random 12-hex-digit id.

    >>> os.environ["RANKBOARD_RUN_ID"] = "job42"; default_run_id()
    'job42'
    >>> del os.environ["RANKBOARD_RUN_ID"]
    """
    for var in ("RANKBOARD_RUN_ID", "TORCHELASTIC_RUN_ID"):
        value = os.environ.get(var, "")
        if value and value != "none":
            return value
    return uuid.uuid4().hex[:12]


def default_rank() -> int:
    """This process's rank: torch.distributed's if initialized, else ``$RANK``, else 0.

    >>> isinstance(default_rank(), int)
    True
    """
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank()
    return int(os.environ.get("RANK", "0"))


class MetricsStream:
    """A producer of prediction/label batches for one (experiment, arm).

    Args:
        target: the service's gRPC address, ``host:port``.
        experiment, arm: the A/B experiment and arm these samples belong to.
        run_id, rank: make the producer id ``"<run_id>/rank<rank>"``
            (defaults: :func:`default_run_id`, :func:`default_rank`); or give
            ``producer_id`` whole.
        metrics: metric declarations per ``(task, phase)``, attached to every
            batch of that task and phase (see :func:`parse_metrics`); without
            one the service picks its defaults.
        token: write token sent as ``authorization: Bearer <token>``
            (default ``$RANKBOARD_TOKEN``).
        max_pending_samples: bound on queued plus unacknowledged samples held
            in memory.
        when_full: ``"spill"`` (default), ``"block"`` or ``"drop"`` (see the
            module docs).
        spill_dir: folder of the spill file (default: the system temp folder).
        max_spill_bytes: bound on the spill file; past it ``log()`` blocks.
        max_batch_samples: largest batch sent (larger records are split).
        linger: seconds the sender may wait after a record is queued for more
            records to share its message (0: send at once).
        backoff_initial, backoff_max: reconnect backoff bounds in seconds.
        ack_timeout: a stream with unacknowledged batches and no ack for this
            many seconds is taken as broken: it is cancelled and reopened, and
            the batches are re-sent (a hung connection cannot stall flush()).
        on_rejected: called (from a background thread) with each
            :class:`Rejection`.
        raise_on_rejected: make :meth:`flush` raise :class:`RejectedBatchesError`.
        first_sequence: sequence of the first batch (default: wall clock in µs).
        credentials: TLS channel credentials; insecure when None.
        channel_options: extra gRPC channel options.

    Example::

        >>> stream = MetricsStream("127.0.0.1:50051", experiment="e", arm="a",
        ...                        run_id="r1", rank=0)
        >>> stream.producer_id
        'r1/rank0'
        >>> stream.close()  # nothing logged: returns at once
    """

    def __init__(
        self,
        target: str,
        *,
        experiment: str,
        arm: str,
        run_id: str | None = None,
        rank: int | None = None,
        producer_id: str | None = None,
        metrics: Mapping[tuple[str, str], MetricList] | None = None,
        token: str | None = None,
        max_pending_samples: int = 2_000_000,
        when_full: Literal["spill", "block", "drop"] = "spill",
        spill_dir: str | os.PathLike | None = None,
        max_spill_bytes: int = 8 << 30,
        max_batch_samples: int = 65_536,
        linger: float = 0.1,
        backoff_initial: float = 0.1,
        backoff_max: float = 5.0,
        ack_timeout: float = 60.0,
        on_rejected: Callable[[Rejection], None] | None = None,
        raise_on_rejected: bool = True,
        first_sequence: int | None = None,
        credentials: grpc.ChannelCredentials | None = None,
        channel_options: Sequence[tuple[str, Any]] = (),
    ) -> None:
        if when_full not in ("spill", "block", "drop"):
            raise ValueError(f"when_full must be 'spill', 'block' or 'drop', got {when_full!r}")
        if max_pending_samples < 1 or max_batch_samples < 1:
            raise ValueError("max_pending_samples and max_batch_samples must be positive")
        if not linger >= 0:  # NaN too
            raise ValueError(f"linger must be >= 0 seconds, got {linger}")
        self.target = target
        self.experiment = experiment
        self.arm = arm
        if producer_id is None:
            producer_id = (
                f"{run_id or default_run_id()}/rank{default_rank() if rank is None else rank}"
            )
        self.producer_id = producer_id
        self.max_pending_samples = int(max_pending_samples)
        self.when_full = when_full
        self.spill_dir = None if spill_dir is None else os.fspath(spill_dir)
        self.max_spill_bytes = int(max_spill_bytes)
        self.max_batch_samples = int(max_batch_samples)
        self.linger = float(linger)
        self.backoff_initial = float(backoff_initial)
        self.backoff_max = float(backoff_max)
        self.ack_timeout = float(ack_timeout)
        self.on_rejected = on_rejected
        self.raise_on_rejected = raise_on_rejected
        self._declared: dict[tuple[str, str], list[Any]] = {}
        for (task, phase), decl in (metrics or {}).items():
            self.declare(task, phase, decl)

        token = token if token is not None else os.environ.get("RANKBOARD_TOKEN") or None
        self._metadata = (("authorization", f"Bearer {token}"),) if token else ()
        options = list(_DEFAULT_CHANNEL_OPTIONS) + list(channel_options)
        self._channel = (
            grpc.secure_channel(target, credentials, options=options)
            if credentials is not None
            else grpc.insecure_channel(target, options=options)
        )
        self._stub = ingest_pb2_grpc.IngestStub(self._channel)

        # One lock, two conditions: the sender waits for work (records queued, a
        # broken stream, stop), flush() and a blocked log() for acks; an ack then
        # wakes no sender and a logged record no flusher.
        self._lock = threading.Lock()
        self._work = threading.Condition(self._lock)
        self._acked = threading.Condition(self._lock)
        self._queue: deque[_Record] = deque()
        self._unacked: OrderedDict[int, _Pending] = OrderedDict()
        self._pending = 0  # queued + unacknowledged samples, spilled ones included
        self._spilled_now = 0  # unacknowledged samples that are in the spill file
        self._spill: _SpillFile | None = None
        self._spill_warned_at = 0.0
        self._queued_samples = 0
        self._flushing = 0  # flush() calls waiting: no lingering
        self._next_seq = int(
            first_sequence if first_sequence is not None else time.time_ns() // 1000
        )
        self._counts: dict[str, int] = dict.fromkeys(
            [
                "logged_records",
                "logged_samples",
                "dropped_records",
                "dropped_samples",
                "spilled_batches",
                "spilled_samples",
                "sent_batches",
                "resent_batches",
                "acked_batches",
                "applied_samples",
                "duplicate_batches",
                "rejected_batches",
                "rejected_samples",
                "reconnects",
            ],
            0,
        )
        self._last_error: str | None = None
        self._unreported: list[Rejection] = []
        self._unreported_more = 0
        self._fatal: MetricsStreamError | None = None
        self._fatal_reported = False
        self._closing = False  # no new records
        self._stop = False  # worker must exit now
        self._closed = False
        self._conn: _Connection | None = None
        self._streams_opened = 0
        self._copy_streams: dict[Any, Any] = {}
        self._worker = threading.Thread(
            target=self._run, name=f"rankboard-stream-{producer_id}", daemon=True
        )
        self._worker.start()

    # ------------------------------------------------------------------ public
    def declare(self, task: str, phase: str, metrics: MetricList) -> None:
        """Declare the metrics of ``(task, phase)`` (see :func:`parse_metrics`).

        >>> s = MetricsStream("127.0.0.1:1", experiment="e", arm="a", producer_id="p")
        >>> s.declare("ctr", "eval", 'metrics { auc { thresholds: 0 } }')
        >>> s.close()
        """
        self._declared[(task, phase)] = parse_metrics(phase, metrics)

    def log(
        self,
        predictions: torch.Tensor | np.ndarray | Sequence[float],
        labels: torch.Tensor | np.ndarray | Sequence[float],
        *,
        task: str,
        phase: Literal["train", "eval"],
        step: int,
        grouping_keys: Mapping[str, torch.Tensor | np.ndarray | Sequence[int]] | None = None,
        weights: torch.Tensor | np.ndarray | Sequence[float] | None = None,
        sample_ids: torch.Tensor | np.ndarray | Sequence[int] | None = None,
    ) -> bool:
        """Queue one step's samples; returns False when dropped (``when_full="drop"``).

        ``predictions`` has n values, or shape (n, C) of class probabilities;
        ``labels``, ``weights``, each grouping key column and ``sample_ids`` have n
        values. ``sample_ids`` (integers, each once per eval step) name the samples of
        an eval set: when two arms log the same ids, their comparison is paired (far
        more powerful). The tensors are copied, so the caller may reuse them at once.
        """
        phase_code(phase)  # ValueError for anything but "train" / "eval"
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        record = self._make_record(
            predictions, labels, task, phase, int(step), grouping_keys, weights, sample_ids
        )
        if record.n == 0:
            return True
        with self._lock:
            self._check_usable()
            waited_since: float | None = None
            while self._in_memory() > 0 and self._in_memory() + record.n > self.max_pending_samples:
                if self.when_full == "spill" and self._spill_oldest(record.n):
                    continue
                if self.when_full == "drop":
                    self._counts["dropped_records"] += 1
                    self._counts["dropped_samples"] += record.n
                    dropped = self._counts["dropped_records"]
                    if dropped == 1 or dropped % 1000 == 0:
                        logger.warning(
                            "rankboard stream %s: service slower than training, dropped %d "
                            "records (%d samples) so far",
                            self.producer_id,
                            dropped,
                            self._counts["dropped_samples"],
                        )
                    return False
                if waited_since is None:
                    waited_since = time.monotonic()
                self._work.notify()  # queued records become (spillable) batches
                self._acked.wait(0.05 if self.when_full == "spill" else 1.0)
                self._check_usable()
                if waited_since and time.monotonic() - waited_since > 10.0:
                    logger.warning(
                        "rankboard stream %s: log() blocked for 10 s waiting for acks "
                        "(%d samples pending; last error: %s)",
                        self.producer_id,
                        self._pending,
                        self._last_error,
                    )
                    waited_since = 0.0
            was_idle = not self._queue
            self._pending += record.n
            self._queued_samples += record.n
            self._queue.append(record)
            self._counts["logged_records"] += 1
            self._counts["logged_samples"] += record.n
            # a sender with records queued already is busy or lingering on a timer:
            # wake it only to start one, or to end it early (each wake costs the
            # training thread a GIL handoff)
            if was_idle or self._linger_left() <= 0:
                self._work.notify()
        return True

    def flush(self, timeout: float | None = None) -> None:
        """Wait until every logged sample is acknowledged by the service.

        Raises :class:`RejectedBatchesError` for batches refused since the
        last flush, :class:`FlushTimeout` after ``timeout`` seconds, and
        :class:`MetricsStreamError` after a fatal error (authentication).
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            self._flushing += 1
            self._work.notify()  # queued records go now, not after the linger
            try:
                while self._pending > 0 and self._fatal is None and not self._stop:
                    remaining = None if deadline is None else deadline - time.monotonic()
                    if remaining is not None and remaining <= 0:
                        raise FlushTimeout(
                            f"rankboard stream {self.producer_id}: {self._pending} samples "
                            f"({len(self._queue)} queued records, {len(self._unacked)} "
                            f"unacknowledged batches) not acknowledged after {timeout} s; "
                            f"last error: {self._last_error}"
                        )
                    self._acked.wait(0.5 if remaining is None else min(remaining, 0.5))
            finally:
                self._flushing -= 1
            if self._fatal is not None:
                self._fatal_reported = True
                raise self._fatal
            rejections, more = self._unreported, self._unreported_more
            self._unreported, self._unreported_more = [], 0
        if rejections and self.raise_on_rejected:
            raise RejectedBatchesError(rejections, more)

    def close(self, timeout: float | None = 60.0) -> None:
        """Flush (waiting at most ``timeout`` seconds), then stop the threads and channel.

        Raises as :meth:`flush` does (a fatal error only if :meth:`flush` or
        :meth:`log` has not raised it already); the stream is closed either way.
        """
        if self._closed:
            return
        with self._lock:
            self._closing = True
            self._notify_all()
        try:
            self._flush_for_close(timeout)
        finally:
            with self._lock:
                self._stop = True
                self._closed = True
                lost = self._pending
                self._notify_all()
            self._worker.join(timeout=10)
            self._channel.close()
            with self._lock:
                spilled, spill = self._spilled_now, self._spill
                self._spill = None
            if spill is not None:
                spill.remove()
                if spilled:
                    logger.error(
                        "rankboard stream %s closed with %d spilled samples never acknowledged"
                        " (spill file %s removed)",
                        self.producer_id,
                        spilled,
                        spill.path,
                    )
            stats = self.stats
            if stats.dropped_records:
                logger.warning(
                    "rankboard stream %s closed: %d records (%d samples) were dropped "
                    "because the service was slower than training",
                    self.producer_id,
                    stats.dropped_records,
                    stats.dropped_samples,
                )
            if lost:
                logger.error(
                    "rankboard stream %s closed with %d samples never acknowledged",
                    self.producer_id,
                    lost,
                )

    def _flush_for_close(self, timeout: float | None) -> None:
        if self._fatal is not None and self._fatal_reported:
            return  # the caller has seen the fatal error already
        self.flush(timeout)

    @property
    def stats(self) -> StreamStats:
        """A consistent snapshot of the counters."""
        with self._lock:
            conn = self._conn
            return StreamStats(
                producer_id=self.producer_id,
                pending_samples=self._pending,
                spill_bytes=self._spill.size if self._spill is not None else 0,
                queued_records=len(self._queue),
                unacked_batches=len(self._unacked),
                connected=bool(conn is not None and not conn.broken and conn.acks > 0),
                last_error=self._last_error,
                **self._counts,
            )

    def __enter__(self) -> MetricsStream:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            self.close()
            return
        try:
            self.close()
        except MetricsStreamError as err:  # do not hide the caller's exception
            logger.error("rankboard stream %s: %s", self.producer_id, err)

    def __repr__(self) -> str:
        return f"MetricsStream({self.target!r}, producer_id={self.producer_id!r})"

    # ---------------------------------------------------------------- records
    def _check_usable(self) -> None:
        if self._fatal is not None:
            self._fatal_reported = True
            raise self._fatal
        if self._closing:
            raise MetricsStreamError(f"rankboard stream {self.producer_id} is closed")

    def _make_record(
        self,
        predictions: Any,
        labels: Any,
        task: str,
        phase: str,
        step: int,
        grouping_keys: Mapping[str, Any] | None,
        weights: Any,
        sample_ids: Any = None,
    ) -> _Record:
        preds = torch.as_tensor(predictions)
        labs = torch.as_tensor(labels)
        n = labs.numel()
        if labs.dim() > 1 and labs.numel() != labs.shape[0]:
            raise ValueError(
                f"labels must have one value per sample, got shape {tuple(labs.shape)}"
            )
        num_classes = 0
        if preds.dim() == 2 and preds.shape[1] > 1:
            num_classes = int(preds.shape[1])
        if preds.numel() != n * max(num_classes, 1):
            raise ValueError(
                f"{task}/{phase}: {n} labels but predictions of shape {tuple(preds.shape)}"
            )
        tensors: list[tuple[torch.Tensor, torch.dtype]] = [
            (preds, torch.float32),
            (labs, torch.float32),
        ]
        key_names: list[str] = []
        for name, col in (grouping_keys or {}).items():
            col_t = torch.as_tensor(col)
            if col_t.numel() != n:
                raise ValueError(f"{task}/{phase}: {n} labels but {col_t.numel()} keys in {name!r}")
            if col_t.is_floating_point():
                raise ValueError(f"grouping key {name!r} must be integers, got {col_t.dtype}")
            key_names.append(name)
            tensors.append((col_t, torch.int64))
        if weights is not None:
            w = torch.as_tensor(weights)
            if w.numel() != n:
                raise ValueError(f"{task}/{phase}: {n} labels but {w.numel()} weights")
            tensors.append((w, torch.float32))
        if sample_ids is not None:
            ids = torch.as_tensor(sample_ids)
            if ids.numel() != n:
                raise ValueError(f"{task}/{phase}: {n} labels but {ids.numel()} sample_ids")
            if ids.is_floating_point():
                raise ValueError(f"sample_ids must be integers, got {ids.dtype}")
            tensors.append((ids, torch.int64))
        host, event = self._to_host(tensors)
        ids_host = host.pop() if sample_ids is not None else None
        keys = dict(zip(key_names, host[2 : 2 + len(key_names)], strict=True))
        return _Record(
            task=task,
            phase=phase,
            step=step,
            predictions=host[0],
            labels=host[1],
            weights=host[-1] if weights is not None else None,
            keys=keys,
            num_classes=num_classes,
            n=n,
            event=event,
            sample_ids=ids_host,
        )

    def _to_host(
        self, tensors: list[tuple[torch.Tensor, torch.dtype]]
    ) -> tuple[list[torch.Tensor], Any]:
        """Detached, flattened host copies; CUDA tensors go on a side stream."""
        out: list[torch.Tensor] = []
        event = None
        for t, dtype in tensors:
            t = t.detach().reshape(-1)
            if t.device.type == "cuda":
                side = self._copy_streams.get(t.device)
                if side is None:
                    side = self._copy_streams[t.device] = torch.cuda.Stream(device=t.device)
                side.wait_stream(torch.cuda.current_stream(t.device))
                with torch.cuda.stream(side):
                    src = t.to(dtype)
                    dst = torch.empty(src.shape, dtype=dtype, pin_memory=True)
                    dst.copy_(src, non_blocking=True)
                t.record_stream(side)
                src.record_stream(side)
                event = torch.cuda.Event()
                event.record(side)
                out.append(dst)
            else:
                out.append(t.to(device="cpu", dtype=dtype, copy=True))
        return out, event

    # ------------------------------------------------------------------ worker
    def _notify_all(self) -> None:
        """Wake every waiter of both conditions (called with the lock held)."""
        self._work.notify_all()
        self._acked.notify_all()

    def _linger_left(self) -> float:
        """Seconds the queued records may still wait for company (lock held)."""
        if (
            not self._queue
            or self.linger <= 0
            or self._flushing
            or self._closing
            or self._queued_samples >= self.max_batch_samples
            or 2 * self._in_memory() >= self.max_pending_samples
        ):
            return 0.0
        return self._queue[0].queued_at + self.linger - time.monotonic()

    def _run(self) -> None:
        backoff = self.backoff_initial
        try:
            while True:
                with self._lock:
                    while (
                        not self._stop
                        and (not self._queue or self._linger_left() > 0)
                        and not ((self._conn is None or self._conn.broken) and self._unacked)
                    ):
                        self._check_ack_timeout()
                        self._work.wait(min(0.5, self._linger_left()) if self._queue else 0.5)
                    self._check_ack_timeout()
                    if self._stop:
                        break
                    conn = self._conn
                    ready = bool(self._queue) and self._linger_left() <= 0
                if ready:
                    # numbered and kept first, whatever the connection: during an outage
                    # the records become batches that can spill, and the next stream
                    # re-sends them in order
                    self._send(self._take(), conn)
                    continue
                if conn is None or conn.broken:
                    if conn is not None:
                        backoff = self._after_break(conn, backoff)
                        if not self._sleep(backoff):
                            break
                    self._open()
        except Exception:  # a bug here must not hang flush(): make it fatal
            logger.exception("rankboard stream %s: sender thread failed", self.producer_id)
            with self._lock:
                self._fatal = MetricsStreamError("rankboard stream sender thread failed; see log")
                self._notify_all()
        finally:
            with self._lock:
                conn, self._conn = self._conn, None
            if conn is not None:
                self._close_conn(conn)

    def _send(self, records: list[_Record], conn: _Connection | None) -> None:
        """Encode ``records`` into numbered batches, keep them until acked, send on ``conn``."""
        for batch, samples in self._encode(records):
            pending = _Pending(
                batch, samples, sequence=batch.sequence, meta=(batch.task, batch.phase, batch.step)
            )
            with self._lock:
                self._unacked[batch.sequence] = pending
                self._counts["sent_batches"] += 1
                live = conn is not None and conn is self._conn and not conn.broken
                pending.sends = int(live)
            if live:
                conn.requests.put(pending)

    def _check_ack_timeout(self) -> None:
        """Mark the stream broken when acks stopped coming (called with the lock held)."""
        conn = self._conn
        if (
            conn is not None
            and not conn.broken
            and self._unacked
            and time.monotonic() - conn.last_ack > self.ack_timeout
        ):
            conn.broken = True
            conn.error = f"no ack for {self.ack_timeout:g} s with {len(self._unacked)} batches out"
            self._last_error = conn.error
            logger.warning("rankboard stream %s: %s", self.producer_id, conn.error)

    def _after_break(self, conn: _Connection, backoff: float) -> float:
        self._close_conn(conn)
        with self._lock:
            self._conn = None
        healthy = conn.acks > 0 or time.monotonic() - conn.started > 5.0
        delay = self.backoff_initial if healthy else min(backoff * 2, self.backoff_max)
        logger.info(
            "rankboard stream %s: stream to %s broke (%s); reconnecting in ~%.2f s",
            self.producer_id,
            self.target,
            conn.error,
            delay,
        )
        return delay

    def _sleep(self, backoff: float) -> bool:
        """Sleep a jittered backoff; False when asked to stop meanwhile."""
        delay = random.uniform(backoff / 2, backoff)
        end = time.monotonic() + delay
        with self._lock:
            while not self._stop:
                remaining = end - time.monotonic()
                if remaining <= 0:
                    return True
                self._work.wait(remaining)
            return False

    def _open(self) -> None:
        conn = _Connection(load=self._load_spilled)
        conn.call = self._stub.Stream(conn.request_iter(), metadata=self._metadata)
        with self._lock:
            if self._streams_opened:
                self._counts["reconnects"] += 1
            self._streams_opened += 1
            self._conn = conn
            resend = list(self._unacked.values())
            again = sum(p.sends > 0 for p in resend)  # the others were never sent yet
            for p in resend:
                p.sends += 1
            self._counts["resent_batches"] += again
        if again:
            logger.info(
                "rankboard stream %s: re-sending %d unacknowledged batches",
                self.producer_id,
                again,
            )
        for p in resend:
            conn.requests.put(p)  # spilled ones are read back as grpc asks for them
        conn.reader = threading.Thread(
            target=self._read_acks,
            args=(conn,),
            name=f"rankboard-acks-{self.producer_id}",
            daemon=True,
        )
        conn.reader.start()

    def _close_conn(self, conn: _Connection) -> None:
        conn.closing = True
        conn.requests.put(None)
        if conn.call is not None:
            conn.call.cancel()
        if conn.reader is not None and conn.reader is not threading.current_thread():
            conn.reader.join(timeout=5)

    def _read_acks(self, conn: _Connection) -> None:
        error: str | None = "the service ended the stream"
        fatal: MetricsStreamError | None = None
        try:
            for ack in conn.call:
                self._on_ack(conn, ack)
        except grpc.RpcError as err:
            code = err.code()
            error = f"{code.name}: {err.details()}"
            if code in _FATAL_CODES and not conn.closing:
                fatal = MetricsStreamError(
                    f"rankboard service at {self.target} refused the stream: {error}"
                )
        with self._lock:
            already = conn.broken
            conn.broken = True
            if not conn.closing and not already:
                conn.error = error
                self._last_error = error
                if fatal is not None and self._fatal is None:
                    logger.error("%s", fatal)
                    self._fatal = fatal
            self._notify_all()

    def _on_ack(self, conn: _Connection, ack: ingest_pb2.Ack) -> None:
        rejection = None
        with self._lock:
            conn.acks += 1
            conn.last_ack = time.monotonic()
            pending = self._unacked.pop(ack.sequence, None)
            if pending is None:
                return  # an ack of a batch re-sent meanwhile, already counted
            self._pending -= pending.samples
            if pending.spill is not None:
                self._after_spilled_ack(pending)
            self._counts["acked_batches"] += 1
            if ack.duplicate:
                self._counts["duplicate_batches"] += 1
            if ack.error_code:
                task, code, step = pending.meta
                phase = PHASE_NAMES[code]
                rejection = Rejection(
                    pending.sequence,
                    task,
                    phase,
                    step,
                    pending.samples,
                    ack.error_code,
                    ack.error_message,
                )
                self._counts["rejected_batches"] += 1
                self._counts["rejected_samples"] += pending.samples
                self._last_error = str(rejection)
                if len(self._unreported) < 100:
                    self._unreported.append(rejection)
                else:
                    self._unreported_more += 1
            else:
                self._counts["applied_samples"] += ack.samples
            self._acked.notify_all()
        if rejection is not None:
            logger.warning("rankboard stream %s: %s", self.producer_id, rejection)
            if self.on_rejected is not None:
                try:
                    self.on_rejected(rejection)
                except Exception:
                    logger.exception("on_rejected callback failed")

    # ------------------------------------------------------------------ spill
    def _in_memory(self) -> int:
        """Pending samples held in memory (lock held)."""
        return self._pending - self._spilled_now

    def _spill_oldest(self, need: int) -> bool:
        """Move the oldest in-memory unacknowledged batches to the spill file until
        ``need`` more samples fit in memory (lock held). False when nothing could go."""
        moved = 0
        for pending in self._unacked.values():
            if self._in_memory() + need <= self.max_pending_samples:
                break
            if pending.batch is None:
                continue
            data = pending.batch.SerializeToString()
            if self._spill is None:
                self._spill = _SpillFile(self.spill_dir, self.producer_id)
            if self._spill.size + len(data) > self.max_spill_bytes:
                if moved == 0:
                    self._warn_spill(f"spill file full ({self._spill.size} bytes); log() blocks")
                break
            pending.spill = self._spill.append(data)
            pending.batch = None
            self._spilled_now += pending.samples
            self._counts["spilled_batches"] += 1
            self._counts["spilled_samples"] += pending.samples
            moved += 1
        if moved:
            self._warn_spill(None)
        return moved > 0

    def _warn_spill(self, problem: str | None) -> None:
        now = time.monotonic()
        first = self._spill_warned_at == 0.0
        if not first and now - self._spill_warned_at < 30.0 and problem is None:
            return
        self._spill_warned_at = now
        logger.warning(
            "rankboard stream %s: the service at %s is not acknowledging (last error: %s); %s"
            " %d samples in %d batches spilled so far to %s, %d bytes; training goes on and"
            " they are re-sent in order when the service is back",
            self.producer_id,
            self.target,
            self._last_error,
            problem or ("spilling to disk:" if first else "still spilling:"),
            self._counts["spilled_samples"],
            self._counts["spilled_batches"],
            self._spill.path if self._spill is not None else "-",
            self._spill.size if self._spill is not None else 0,
        )

    def _load_spilled(self, pending: _Pending) -> ingest_pb2.Batch | None:
        """The batch of a spilled pending entry, read back (None once acknowledged)."""
        with self._lock:
            spill, where = self._spill, pending.spill
            if spill is None or where is None or pending.sequence not in self._unacked:
                return None
            data = spill.read(where)
        batch = ingest_pb2.Batch()
        batch.ParseFromString(data)
        return batch

    def _after_spilled_ack(self, pending: _Pending) -> None:
        """Account an acknowledged spilled batch; drop the file once empty (lock held)."""
        self._spilled_now -= pending.samples
        if self._spilled_now == 0 and self._spill is not None:
            logger.warning(
                "rankboard stream %s: the service is back; the %d spilled samples went"
                " through, spill file %s removed",
                self.producer_id,
                self._counts["spilled_samples"],
                self._spill.path,
            )
            self._spill.remove()
            self._spill = None
            self._spill_warned_at = 0.0

    def _take(self) -> list[_Record]:
        """Records to send now: the first one and the ones that can share its batch."""
        with self._lock:
            first = self._queue.popleft()
            records = [first]
            total = first.n
            while (
                self._queue
                and self._queue[0].shape_key == first.shape_key
                and total + self._queue[0].n <= self.max_batch_samples
            ):
                rec = self._queue.popleft()
                records.append(rec)
                total += rec.n
            self._queued_samples -= total
            return records

    def _encode(self, records: list[_Record]) -> list[tuple[ingest_pb2.Batch, int]]:
        for r in records:
            if r.event is not None:
                r.event.synchronize()
        first = records[0]

        def cat(parts: list[torch.Tensor]) -> np.ndarray:
            return (parts[0] if len(parts) == 1 else torch.cat(parts)).numpy()

        preds = cat([r.predictions for r in records])
        labels = cat([r.labels for r in records])
        weights = cat([r.weights for r in records]) if first.weights is not None else None
        keys = {name: cat([r.keys[name] for r in records]) for name in first.keys}
        ids = cat([r.sample_ids for r in records]) if first.sample_ids is not None else None
        n = labels.shape[0]
        width = max(first.num_classes, 1)
        declared = self._declared.get((first.task, first.phase), [])
        # (step, first row, end row) of each run of records of one step
        spans: list[list[int]] = []
        row = 0
        for r in records:
            if spans and spans[-1][0] == r.step:
                spans[-1][2] += r.n
            else:
                spans.append([r.step, row, row + r.n])
            row += r.n
        out = []
        for lo in range(0, n, self.max_batch_samples):
            hi = min(n, lo + self.max_batch_samples)
            parts = [
                (step, min(end, hi) - max(start, lo))
                for step, start, end in spans
                if start < hi and end > lo
            ]
            batch = ingest_pb2.Batch(
                producer_id=self.producer_id,
                sequence=self._next_seq,
                experiment=self.experiment,
                arm=self.arm,
                task=first.task,
                phase=phase_code(first.phase),
                step=parts[0][0],
                predictions=encode_array(preds[lo * width : hi * width], "<f4"),
                labels=encode_array(labels[lo:hi], "<f4"),
                num_classes=first.num_classes,
            )
            for name, col in keys.items():
                batch.grouping_keys.add(name=name, keys=encode_array(col[lo:hi], "<i8"))
            if weights is not None:
                batch.weights.CopyFrom(encode_array(weights[lo:hi], "<f4"))
            if ids is not None:
                batch.sample_ids.CopyFrom(encode_array(ids[lo:hi], "<i8"))
            if len(parts) > 1:
                for step, count in parts:
                    batch.segments.add(step=step, samples=count)
            if declared:
                target = batch.train_metrics if first.phase == "train" else batch.metrics
                target.extend(declared)
            self._next_seq += 1
            out.append((batch, hi - lo))
        return out
