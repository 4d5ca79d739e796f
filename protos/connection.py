"""One ``rankboard.v1.Ingest/Stream`` call: a request queue feeding gRPC and an ack reader.

A :class:`Connection` is what a :class:`rankboard.protos.stream.Sender` holds
while a stream is open: it feeds :class:`Pending` batches to gRPC in the order
they were put (a batch moved out of memory meanwhile is read back through
``load`` when gRPC asks for it), reads the acknowledgements on a thread of its
own and hands each to ``on_ack``; when the call ends, ``on_end`` gets the reason
and whether it is fatal (authentication, permission, an unknown method: not
worth a retry). The sender decides what a broken stream means.

Example::

    >>> options = dict(DEFAULT_CHANNEL_OPTIONS)
    >>> options["grpc.enable_retries"], options["grpc.max_send_message_length"] >> 20
    (0, 64)
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import grpc

from rankboard.protos import ingest_pb2, ingest_pb2_grpc

__all__ = ["DEFAULT_CHANNEL_OPTIONS", "FATAL_CODES", "Connection", "Pending"]

FATAL_CODES = {
    grpc.StatusCode.UNAUTHENTICATED,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.UNIMPLEMENTED,
}
DEFAULT_CHANNEL_OPTIONS: tuple[tuple[str, Any], ...] = (
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


@dataclass
class Pending:
    """An unacknowledged batch: in memory, or stored elsewhere (``batch`` None, ``stored``)."""

    batch: ingest_pb2.Batch | None
    samples: int
    sends: int = 0
    sequence: int = 0
    # task, phase, step (for a rejection)
    meta: tuple[str, ingest_pb2.Phase, int] = ("", ingest_pb2.PHASE_UNSPECIFIED, 0)
    stored: Any = None  # where a spill store keeps it


class Connection:
    """One open bidi stream and its ack reader thread.

    Args:
        stub, metadata: the Ingest stub and the call's metadata (the write token).
        load: the batch of a :class:`Pending` whose ``batch`` is None (None: acknowledged).
        on_ack: called on the reader thread with each :class:`Ack`.
        on_end: called once the call is over with ``(reason, fatal)``.
        name: the reader thread's name.

    The sender's lock guards :attr:`acks`, :attr:`last_ack`, :attr:`broken` and
    :attr:`error`; the connection itself never takes it.
    """

    def __init__(
        self,
        stub: ingest_pb2_grpc.IngestStub,
        metadata: tuple[tuple[str, str], ...],
        *,
        load: Callable[[Pending], ingest_pb2.Batch | None],
        on_ack: Callable[[Connection, ingest_pb2.Ack], None],
        on_end: Callable[[Connection, str, bool], None],
        name: str,
    ) -> None:
        self.load = load
        self.on_ack = on_ack
        self.on_end = on_end
        self.requests: queue.SimpleQueue[Pending | None] = queue.SimpleQueue()
        self.started = time.monotonic()
        self.acks = 0
        self.last_ack = time.monotonic()
        self.broken = False
        self.closing = False
        self.error: str | None = None
        self.call: Any = stub.Stream(self._request_iter(), metadata=metadata)
        self._reader = threading.Thread(target=self._read, name=name, daemon=True)

    def put(self, pending: Pending) -> None:
        """Queue ``pending`` for sending on this stream (in put order)."""
        self.requests.put(pending)

    def start(self) -> None:
        """Start reading acknowledgements."""
        self._reader.start()

    def close(self) -> None:
        """End the call and wait (up to 5 s) for the reader."""
        self.closing = True
        self.requests.put(None)
        self.call.cancel()
        if self._reader.is_alive() and self._reader is not threading.current_thread():
            self._reader.join(timeout=5)

    def _request_iter(self) -> Iterator[ingest_pb2.Batch]:
        while True:
            item = self.requests.get()
            if item is None:
                return
            batch = item.batch if item.batch is not None else self.load(item)
            if batch is not None:  # None: acknowledged meanwhile
                yield batch

    def _read(self) -> None:
        reason, fatal = "the service ended the stream", False
        try:
            for ack in self.call:
                self.on_ack(self, ack)
        except grpc.RpcError as err:
            code = err.code()
            reason = f"{code.name}: {err.details()}"
            fatal = code in FATAL_CODES and not self.closing
        self.on_end(self, reason, fatal)
