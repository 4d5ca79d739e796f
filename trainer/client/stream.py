"""The public facade: :class:`MetricsStream`, what a training loop calls.

It wires the parts of the client together: an
:class:`~rankboard.trainer.client.accumulator.Accumulator` (records, batching,
linger, memory bound and ``when_full`` policy), a
:class:`~rankboard.trainer.client.spill.SpillStore` (the spill file) and a
:class:`rankboard.protos.stream.Sender` (one stream, sequence numbers, acks,
re-sends), all under the sender's lock. See :mod:`rankboard.trainer.client` for
the delivery guarantees.
"""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import grpc
import numpy as np
import torch

from rankboard.protos.stream import MetricsStreamError, Rejection, Sender
from rankboard.protos.wire import MetricList, parse_metrics, phase_code
from rankboard.trainer.client.accumulator import Accumulator, Limits
from rankboard.trainer.client.spill import SpillStore

logger = logging.getLogger(__name__)

__all__ = ["MetricsStream", "StreamStats", "default_rank", "default_run_id"]


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
        limits = Limits(max_pending_samples, max_batch_samples, linger, when_full)  # checked
        if producer_id is None:
            producer_id = (
                f"{run_id or default_run_id()}/rank{default_rank() if rank is None else rank}"
            )
        self.target = target
        self.experiment = experiment
        self.arm = arm
        self.producer_id = producer_id
        self.raise_on_rejected = raise_on_rejected
        token = token if token is not None else os.environ.get("RANKBOARD_TOKEN") or None
        self._sender = Sender(
            target,
            producer_id,
            token=token,
            first_sequence=first_sequence,
            backoff_initial=backoff_initial,
            backoff_max=backoff_max,
            ack_timeout=ack_timeout,
            on_rejected=on_rejected,
            credentials=credentials,
            channel_options=channel_options,
        )
        folder = None if spill_dir is None else os.fspath(spill_dir)
        self._spill = SpillStore(self._sender, folder, max_spill_bytes)
        self._acc = Accumulator(
            self._sender, self._spill, experiment=experiment, arm=arm, limits=limits
        )
        self._sender.source = self._acc
        self._sender.on_acked = self._spill.release
        self._sender.load = self._spill.read
        self._lock = self._sender.lock
        self._closed = False
        for (task, phase), decl in (metrics or {}).items():
            self.declare(task, phase, decl)
        self._sender.start()

    # ------------------------------------------------------------------ public
    def declare(self, task: str, phase: str, metrics: MetricList) -> None:
        """Declare the metrics of ``(task, phase)`` (see :func:`parse_metrics`).

        >>> s = MetricsStream("127.0.0.1:1", experiment="e", arm="a", producer_id="p")
        >>> s.declare("ctr", "eval", 'metrics { auc { thresholds: 0 } }')
        >>> s.close()
        """
        self._acc.declared[(task, phase)] = parse_metrics(phase, metrics)

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
        record = self._acc.make_record(
            predictions, labels, task, phase, int(step), grouping_keys, weights, sample_ids
        )
        if record.n == 0:
            return True
        with self._lock:
            return self._acc.add(record)

    def flush(self, timeout: float | None = None) -> None:
        """Wait until every logged sample is acknowledged by the service.

        Raises :class:`RejectedBatchesError` for batches refused since the
        last flush, :class:`FlushTimeout` after ``timeout`` seconds, and
        :class:`MetricsStreamError` after a fatal error (authentication).
        """
        acc, sender = self._acc, self._sender
        with self._lock:
            acc.flushing += 1  # queued records go now, not after the linger
        try:
            sender.flush(
                timeout,
                outstanding=acc.pending,
                describe=lambda: (
                    f"{len(acc.queue)} queued records, {len(sender.unacked)} unacknowledged batches"
                ),
                raise_rejected=self.raise_on_rejected,
            )
        finally:
            with self._lock:
                acc.flushing -= 1

    def close(self, timeout: float | None = 60.0) -> None:
        """Flush (waiting at most ``timeout`` seconds), then stop the threads and channel.

        Raises as :meth:`flush` does (a fatal error only if :meth:`flush` or
        :meth:`log` has not raised it already); the stream is closed either way.
        """
        if self._closed:
            return
        sender = self._sender
        with self._lock:
            self._acc.closing = True
            sender.notify_all()
        try:
            if sender.fatal is None or not sender.fatal_reported:
                self.flush(timeout)
        finally:
            with self._lock:
                lost = self._acc.pending()
            self._closed = True
            sender.stop()
            with self._lock:
                self._spill.close()
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

    @property
    def stats(self) -> StreamStats:
        """A consistent snapshot of the counters."""
        with self._lock:
            sent = self._sender.snapshot()
            return StreamStats(
                producer_id=self.producer_id,
                pending_samples=self._acc.pending(),
                spilled_batches=self._spill.batches_total,
                spilled_samples=self._spill.samples_total,
                spill_bytes=self._spill.size,
                queued_records=len(self._acc.queue),
                unacked_batches=sent.pop("unacked_batches"),
                connected=sent.pop("connected"),
                last_error=sent.pop("last_error"),
                **{k: v for k, v in sent.items() if k != "unacked_samples"},
                **self._acc.counts,
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
