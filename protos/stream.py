"""The producer side of ``rankboard.v1.Ingest/Stream``: numbered batches, acks, re-sends.

A :class:`Sender` is one idempotent producer: it gives every batch the next
sequence number, keeps it until the service acknowledges it, sends it over one
bidirectional stream, reopens a broken stream (exponential backoff with
jitter) and sends every unacknowledged batch again, in order; the service's
idempotency (``sequence <= last applied`` of the producer -> ``duplicate``)
keeps a batch from counting twice. Refused batches (``Ack.error_code``) become
:class:`Rejection` values that :meth:`Sender.flush` raises as
:class:`RejectedBatchesError`.

Why here, next to the protos and not in ``rankboard.trainer``: two producers
use it. :class:`rankboard.trainer.MetricsStream` (tensors from a training loop:
an accumulator that batches and lingers in front of a sender) and ``rankboard
send`` (a file's rows, already NumPy arrays, encoded with
:mod:`rankboard.protos.wire`), which is part of the service's command line and
must not depend on the trainer package. Like the codec it needs no torch.

One open stream is a :class:`rankboard.protos.connection.Connection`; the
outcomes the sender reports (:class:`Rejection` and the errors) are in
:mod:`rankboard.protos.delivery`, re-exported here. What is left is one class a
little over the ~400 lines of the other modules: the sender thread, the ack
readers and the producers calling :meth:`Sender.send` and :meth:`Sender.flush`
share its lock and counters, and split further that locking would spread over
several files.

Threads: one sender thread per :class:`Sender` (it drains its ``source``, if
any, and reconnects), and one ack reader per stream. One lock guards the state;
``work`` wakes the sender thread, ``acked`` wakes whoever waits for acks.

Example (needs a running service, hence skipped in doctests)::

    >>> from rankboard.protos import wire
    >>> sender = Sender("127.0.0.1:50051", "files/run1", first_sequence=1)
    >>> sender.start()  # doctest: +SKIP
    >>> sender.send([(wire.encode_batch(producer_id="files/run1", experiment="e", arm="a",
    ...     task="ctr", phase="eval", step=0, predictions=p, labels=y), len(y))])  # doctest: +SKIP
    >>> sender.flush(timeout=30); sender.close()  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import grpc

from rankboard.protos import ingest_pb2, ingest_pb2_grpc
from rankboard.protos.connection import DEFAULT_CHANNEL_OPTIONS, Connection, Pending
from rankboard.protos.delivery import (
    FlushTimeout,
    MetricsStreamError,
    RejectedBatchesError,
    Rejection,
)
from rankboard.protos.wire import PHASE_NAMES

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_CHANNEL_OPTIONS",
    "BatchSource",
    "FlushTimeout",
    "MetricsStreamError",
    "Pending",
    "RejectedBatchesError",
    "Rejection",
    "Sender",
]

SENDER_COUNTS = (
    "sent_batches",
    "resent_batches",
    "acked_batches",
    "applied_samples",
    "duplicate_batches",
    "rejected_batches",
    "rejected_samples",
    "reconnects",
)


class BatchSource(Protocol):
    """What a sender drains (the trainer client's accumulator)."""

    def linger_left(self) -> float | None:
        """Seconds until what is queued should go (<= 0: now); None: nothing queued."""

    def take(self) -> Any:
        """Remove what goes now, adding its samples to the sender's ``unacked_samples``
        (lock held)."""

    def encode(self, taken: Any) -> list[tuple[ingest_pb2.Batch, int]]:
        """``(batch, samples)`` of what :meth:`take` returned (lock not held)."""


class Sender:
    """One producer id's delivery of numbered batches over one stream at a time.

    Args:
        target: the service's gRPC address, ``host:port``.
        producer_id: the producer's id (sequences are per producer).
        token: write token, sent as ``authorization: Bearer <token>``.
        first_sequence: sequence of the first batch (default: wall clock in µs, so a
            restarted producer that reuses its id still moves forward).
        backoff_initial, backoff_max: reconnect backoff bounds in seconds.
        ack_timeout: a stream with unacknowledged batches and no ack for this long
            is taken as broken, cancelled and reopened.
        on_rejected: called (from the ack thread) with each :class:`Rejection`.
        on_acked: called with the lock held for each acknowledged :class:`Pending`.
        load: reads back a pending batch whose ``batch`` was moved out of memory.
        credentials, channel_options: TLS credentials (insecure when None), gRPC options.

    >>> s = Sender("127.0.0.1:1", "p", first_sequence=5)
    >>> s.next_sequence, s.stats()["sent_batches"]
    (5, 0)
    >>> s.close()
    """

    def __init__(
        self,
        target: str,
        producer_id: str,
        *,
        token: str | None = None,
        first_sequence: int | None = None,
        backoff_initial: float = 0.1,
        backoff_max: float = 5.0,
        ack_timeout: float = 60.0,
        on_rejected: Callable[[Rejection], None] | None = None,
        on_acked: Callable[[Pending], None] | None = None,
        load: Callable[[Pending], bytes | None] | None = None,
        credentials: grpc.ChannelCredentials | None = None,
        channel_options: Sequence[tuple[str, Any]] = (),
    ) -> None:
        self.target = target
        self.producer_id = producer_id
        self.backoff_initial = float(backoff_initial)
        self.backoff_max = float(backoff_max)
        self.ack_timeout = float(ack_timeout)
        self.on_rejected = on_rejected
        self.on_acked = on_acked
        self.load = load
        self.source: BatchSource | None = None
        self._metadata = (("authorization", f"Bearer {token}"),) if token else ()
        options = list(DEFAULT_CHANNEL_OPTIONS) + list(channel_options)
        self._channel = (
            grpc.secure_channel(target, credentials, options=options)
            if credentials is not None
            else grpc.insecure_channel(target, options=options)
        )
        self._stub = ingest_pb2_grpc.IngestStub(self._channel)
        # One lock, two conditions: the sender thread waits for work (a source with
        # something to send, a broken stream, stop), flushes and blocked producers
        # for acks; an ack then wakes no sender and new work no flusher.
        self.lock = threading.Lock()
        self.work = threading.Condition(self.lock)
        self.acked = threading.Condition(self.lock)
        self.unacked: OrderedDict[int, Pending] = OrderedDict()
        self.unacked_samples = 0
        self.next_sequence = int(
            first_sequence if first_sequence is not None else time.time_ns() // 1000
        )
        self.counts: dict[str, int] = dict.fromkeys(SENDER_COUNTS, 0)
        self.last_error: str | None = None
        self.fatal: MetricsStreamError | None = None
        self.fatal_reported = False
        self.stopping = False
        self._unreported: list[Rejection] = []
        self._unreported_more = 0
        self._conn: Connection | None = None
        self._streams_opened = 0
        self._thread = threading.Thread(
            target=self._run, name=f"rankboard-stream-{producer_id}", daemon=True
        )

    # ------------------------------------------------------------------ public
    def start(self) -> None:
        """Start the sender thread (after :attr:`source` is set, if there is one)."""
        self._thread.start()

    def send(
        self, batches: Sequence[tuple[ingest_pb2.Batch, int]], *, counted: bool = False
    ) -> None:
        """Number ``(batch, samples)`` pairs, keep them until acknowledged, send them.

        ``counted``: their samples are in :attr:`unacked_samples` already (a source
        hands its records over at :meth:`BatchSource.take`, so a flush never sees
        them neither queued nor unacknowledged while they are encoded).
        """
        with self.lock:
            live = self._conn if self._conn is not None and not self._conn.broken else None
            for batch, samples in batches:
                batch.sequence = self.next_sequence
                self.next_sequence += 1
                pending = Pending(
                    batch,
                    samples,
                    sends=int(live is not None),
                    sequence=batch.sequence,
                    meta=(batch.task, batch.phase, batch.step),
                )
                self.unacked[batch.sequence] = pending
                self.unacked_samples += 0 if counted else samples
                self.counts["sent_batches"] += 1
                if live is not None:  # in order with re-sends: _open puts them under the lock too
                    live.put(pending)
            self.work.notify()  # a stream to open, if none is

    def flush(
        self,
        timeout: float | None = None,
        *,
        outstanding: Callable[[], int] | None = None,
        describe: Callable[[], str] | None = None,
        raise_rejected: bool = True,
    ) -> None:
        """Wait until ``outstanding()`` (default: unacknowledged samples) is 0.

        Raises :class:`RejectedBatchesError` for batches refused since the last
        flush (unless ``raise_rejected`` is False), :class:`FlushTimeout` after
        ``timeout`` seconds (``describe()`` says what is left, lock held) and
        :class:`MetricsStreamError` after a fatal error.
        """
        left = outstanding or (lambda: self.unacked_samples)
        deadline = None if timeout is None else time.monotonic() + timeout
        with self.lock:
            self.work.notify()
            while left() > 0 and self.fatal is None and not self.stopping:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    what = describe() if describe else f"{len(self.unacked)} unacknowledged batches"
                    raise FlushTimeout(
                        f"rankboard stream {self.producer_id}: {left()} samples ({what})"
                        f" not acknowledged after {timeout} s; last error: {self.last_error}"
                    )
                self.acked.wait(0.5 if remaining is None else min(remaining, 0.5))
            self.raise_fatal()
            rejections, more = self._unreported, self._unreported_more
            self._unreported, self._unreported_more = [], 0
        if rejections and raise_rejected:
            raise RejectedBatchesError(rejections, more)

    def raise_fatal(self) -> None:
        """Raise the fatal error, if any, and remember it was reported (lock held)."""
        if self.fatal is not None:
            self.fatal_reported = True
            raise self.fatal

    def stop(self) -> None:
        """Stop the thread (what is unacknowledged stays so) and close the channel."""
        with self.lock:
            self.stopping = True
            self.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout=10)
        self._channel.close()

    close = stop

    def stats(self) -> dict[str, Any]:
        """The counters, ``unacked_batches``, ``unacked_samples`` and ``connected`` (a copy)."""
        with self.lock:
            return self.snapshot()

    def snapshot(self) -> dict[str, Any]:
        """:meth:`stats` for a caller that holds the lock."""
        conn = self._conn
        return {
            **self.counts,
            "unacked_batches": len(self.unacked),
            "unacked_samples": self.unacked_samples,
            "connected": bool(conn is not None and not conn.broken and conn.acks > 0),
            "last_error": self.last_error,
        }

    def notify_all(self) -> None:
        """Wake every waiter of both conditions (lock held)."""
        self.work.notify_all()
        self.acked.notify_all()

    # ------------------------------------------------------------------ thread
    def _linger_left(self) -> float | None:
        return None if self.source is None else self.source.linger_left()

    def _run(self) -> None:
        backoff = self.backoff_initial
        try:
            while True:
                with self.lock:
                    while (
                        not self.stopping
                        and ((left := self._linger_left()) is None or left > 0)
                        and not ((self._conn is None or self._conn.broken) and self.unacked)
                    ):
                        self._check_ack_timeout()
                        self.work.wait(0.5 if left is None else min(0.5, left))
                    self._check_ack_timeout()
                    if self.stopping:
                        break
                    conn = self._conn
                    left = self._linger_left()
                    source = self.source if left is not None and left <= 0 else None
                    taken = source.take() if source is not None else None
                if source is not None:
                    # numbered and kept first, whatever the connection: during an outage
                    # they become batches that can spill, and the next stream re-sends
                    # them in order
                    self.send(source.encode(taken), counted=True)
                    continue
                if conn is None or conn.broken:
                    if conn is not None:
                        backoff = self._after_break(conn, backoff)
                        if not self._sleep(backoff):
                            break
                    self._open()
        except Exception:  # a bug here must not hang flush(): make it fatal
            logger.exception("rankboard stream %s: sender thread failed", self.producer_id)
            with self.lock:
                self.fatal = MetricsStreamError("rankboard stream sender thread failed; see log")
                self.notify_all()
        finally:
            with self.lock:
                conn, self._conn = self._conn, None
            if conn is not None:
                conn.close()

    def _check_ack_timeout(self) -> None:
        """Mark the stream broken when acks stopped coming (lock held)."""
        conn = self._conn
        if (
            conn is not None
            and not conn.broken
            and self.unacked
            and time.monotonic() - conn.last_ack > self.ack_timeout
        ):
            conn.broken = True
            conn.error = f"no ack for {self.ack_timeout:g} s with {len(self.unacked)} batches out"
            self.last_error = conn.error
            logger.warning("rankboard stream %s: %s", self.producer_id, conn.error)

    def _after_break(self, conn: Connection, backoff: float) -> float:
        conn.close()
        with self.lock:
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
        with self.lock:
            while not self.stopping:
                remaining = end - time.monotonic()
                if remaining <= 0:
                    return True
                self.work.wait(remaining)
            return False

    def _load(self, pending: Pending) -> ingest_pb2.Batch | None:
        """The batch of a pending entry moved out of memory (None once acknowledged)."""
        with self.lock:
            if pending.batch is not None:
                return pending.batch
            if self.load is None or pending.sequence not in self.unacked:
                return None
            data = self.load(pending)
        if data is None:
            return None
        batch = ingest_pb2.Batch()
        batch.ParseFromString(data)
        return batch

    def _open(self) -> None:
        conn = Connection(
            self._stub,
            self._metadata,
            load=self._load,
            on_ack=self._on_ack,
            on_end=self._on_end,
            name=f"rankboard-acks-{self.producer_id}",
        )
        with self.lock:
            if self._streams_opened:
                self.counts["reconnects"] += 1
            self._streams_opened += 1
            self._conn = conn
            again = 0
            for p in self.unacked.values():  # stored ones are read back as grpc asks
                again += p.sends > 0  # the others were never sent yet
                p.sends += 1
                conn.put(p)
            self.counts["resent_batches"] += again
        if again:
            logger.info(
                "rankboard stream %s: re-sending %d unacknowledged batches",
                self.producer_id,
                again,
            )
        conn.start()

    def _on_end(self, conn: Connection, reason: str, fatal: bool) -> None:
        with self.lock:
            already = conn.broken
            conn.broken = True
            if not conn.closing and not already:
                conn.error = reason
                self.last_error = reason
                if fatal and self.fatal is None:
                    self.fatal = MetricsStreamError(
                        f"rankboard service at {self.target} refused the stream: {reason}"
                    )
                    logger.error("%s", self.fatal)
            self.notify_all()

    def _on_ack(self, conn: Connection, ack: ingest_pb2.Ack) -> None:
        rejection = None
        with self.lock:
            conn.acks += 1
            conn.last_ack = time.monotonic()
            pending = self.unacked.pop(ack.sequence, None)
            if pending is None:
                return  # an ack of a batch re-sent meanwhile, already counted
            self.unacked_samples -= pending.samples
            if self.on_acked is not None:
                self.on_acked(pending)
            self.counts["acked_batches"] += 1
            if ack.duplicate:
                self.counts["duplicate_batches"] += 1
            if ack.error_code:
                task, phase, step = pending.meta
                rejection = Rejection(
                    pending.sequence,
                    task,
                    PHASE_NAMES.get(phase, str(phase)),
                    step,
                    pending.samples,
                    ack.error_code,
                    ack.error_message,
                )
                self.counts["rejected_batches"] += 1
                self.counts["rejected_samples"] += pending.samples
                self.last_error = str(rejection)
                if len(self._unreported) < 100:
                    self._unreported.append(rejection)
                else:
                    self._unreported_more += 1
            else:
                self.counts["applied_samples"] += ack.samples
            self.acked.notify_all()
        if rejection is not None:
            logger.warning("rankboard stream %s: %s", self.producer_id, rejection)
            if self.on_rejected is not None:
                try:
                    self.on_rejected(rejection)
                except Exception:
                    logger.exception("on_rejected callback failed")
