"""The gRPC front end: a thin Ingest servicer, auth, health and reflection.

Domain errors map to status codes in :func:`status_of`; a batch's error is
reported in its :class:`Ack` and the stream goes on; whole-call errors
(UNAUTHENTICATED, UNAVAILABLE while draining) end the call.
"""

from __future__ import annotations

import collections
import hmac
import logging
import queue
import threading
from collections.abc import Iterator
from concurrent import futures
from typing import NamedTuple

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from rankboard.protos import ingest_pb2, ingest_pb2_grpc
from rankboard.service.errors import ServiceError, ShuttingDown
from rankboard.service.state.store import MetricStore
from rankboard.service.telemetry import TELEMETRY

log = logging.getLogger(__name__)
_END = object()
SERVICE_NAME = ingest_pb2.DESCRIPTOR.services_by_name["Ingest"].full_name


def status_of(err: ServiceError) -> grpc.StatusCode:
    """The gRPC status code of a domain error."""
    return getattr(grpc.StatusCode, err.code, grpc.StatusCode.INTERNAL)


_MAX_PENDING_ACKS = 16  # batches applied per stream ahead of their log sync


class RawBatch(NamedTuple):
    """A decoded Batch with the bytes it came from (the write-ahead log stores those)."""

    msg: ingest_pb2.Batch
    raw: bytes

    @classmethod
    def parse(cls, raw: bytes) -> RawBatch:
        """The request deserializer of the Ingest methods."""
        return cls(ingest_pb2.Batch.FromString(raw), raw)


def _ingest_handler(servicer: IngestServicer) -> grpc.GenericRpcHandler:
    """Ingest's method handlers, keeping each request's wire bytes (no re-serialization)."""
    ack = ingest_pb2.Ack.SerializeToString
    return grpc.method_handlers_generic_handler(
        SERVICE_NAME,
        {
            "Stream": grpc.stream_stream_rpc_method_handler(
                TELEMETRY.counted_stream(servicer.Stream),  # telemetry (DASHBOARD)
                request_deserializer=RawBatch.parse,
                response_serializer=ack,
            ),
            "Send": grpc.unary_unary_rpc_method_handler(
                servicer.Send, request_deserializer=RawBatch.parse, response_serializer=ack
            ),
        },
    )


class IngestServicer(ingest_pb2_grpc.IngestServicer):
    """Applies batches to the store and acknowledges each one."""

    def __init__(self, store: MetricStore, draining: threading.Event) -> None:
        self._store = store
        self._draining = draining

    def _ack(
        self, request: ingest_pb2.Batch | RawBatch, wait: bool = True
    ) -> tuple[ingest_pb2.Ack, int]:
        """Apply one batch; return its ack and the log position it waits for (0: none)."""
        if isinstance(request, RawBatch):
            batch, raw = request.msg, request.raw
        else:
            batch, raw = request, None
        ack = ingest_pb2.Ack(producer_id=batch.producer_id, sequence=batch.sequence)
        try:
            result = self._store.ingest(batch, raw=raw, wait=wait)
        except ShuttingDown:
            raise
        except ServiceError as err:
            ack.error_code = status_of(err).value[0]
            ack.error_message = str(err)
            return ack, 0
        except Exception as err:
            log.exception("batch %s/%d failed", batch.producer_id, batch.sequence)
            ack.error_code = grpc.StatusCode.INTERNAL.value[0]
            ack.error_message = f"internal error: {err}"
            return ack, 0
        ack.duplicate = result.duplicate
        ack.samples = result.samples
        return ack, result.lsn

    def Stream(
        self, request_iterator: Iterator[ingest_pb2.Batch], context: grpc.ServicerContext
    ) -> Iterator[ingest_pb2.Ack]:
        """One ack per batch, in order."""
        if self._draining.is_set():
            context.abort(grpc.StatusCode.UNAVAILABLE, "the service is shutting down")
        # A reader thread hands batches over through a small queue, so that an idle
        # stream ends as soon as the service drains instead of holding shutdown up;
        # the bounded queue keeps gRPC's flow control pushing back on fast producers.
        inbox: queue.Queue = queue.Queue(maxsize=4)

        def read() -> None:
            try:
                for batch in request_iterator:
                    inbox.put(batch)
            except Exception:  # noqa: BLE001 - a cancelled or broken call ends the stream
                pass
            inbox.put(_END)

        threading.Thread(target=read, name="grpc-stream-reader", daemon=True).start()
        # Acks wait for the log sync of their batch; meanwhile the next batches are
        # applied, so the disk and the metric updates work in parallel (acks stay in order).
        pending: collections.deque[tuple[ingest_pb2.Ack, int]] = collections.deque()
        try:
            while True:
                while pending and self._store.is_durable(pending[0][1]):
                    yield pending.popleft()[0]
                try:
                    batch = inbox.get_nowait() if pending else inbox.get(timeout=0.1)
                except queue.Empty:
                    if pending:  # nothing else to do: wait for the disk
                        self._store.wait_durable(pending[0][1])
                    elif self._draining.is_set():
                        return  # idle while draining: the producer reconnects later
                    continue
                if batch is _END:
                    break
                pending.append(self._ack(batch, wait=False))
                if len(pending) > _MAX_PENDING_ACKS:
                    self._store.wait_durable(pending[0][1])
            for ack, lsn in pending:
                self._store.wait_durable(lsn)
                yield ack
        except ShuttingDown as err:
            context.abort(grpc.StatusCode.UNAVAILABLE, str(err))

    def Send(self, request: ingest_pb2.Batch, context: grpc.ServicerContext) -> ingest_pb2.Ack:
        """A single batch."""
        try:
            return self._ack(request)[0]
        except ShuttingDown as err:
            context.abort(grpc.StatusCode.UNAVAILABLE, str(err))
            raise  # unreachable: abort raises


class TokenInterceptor(grpc.ServerInterceptor):
    """Requires ``authorization: Bearer <token>`` on the Ingest service's methods."""

    def __init__(self, token: str) -> None:
        self._expected = f"Bearer {token}".encode()

        def deny(request: object, context: grpc.ServicerContext) -> None:
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong write token")

        self._deny_unary = grpc.unary_unary_rpc_method_handler(deny)
        self._deny_stream = grpc.stream_stream_rpc_method_handler(deny)

    def intercept_service(self, continuation, handler_call_details):
        method = handler_call_details.method
        if not method.startswith(f"/{SERVICE_NAME}/"):
            return continuation(handler_call_details)
        metadata = dict(handler_call_details.invocation_metadata or ())
        given = str(metadata.get("authorization", "")).encode()
        if hmac.compare_digest(given, self._expected):
            return continuation(handler_call_details)
        return self._deny_stream if method.endswith("/Stream") else self._deny_unary


def build_grpc_server(
    store: MetricStore,
    draining: threading.Event,
    *,
    token: str | None = None,
    max_message_bytes: int = 64 << 20,
    max_workers: int = 32,
    max_concurrent_rpcs: int = 256,
) -> tuple[grpc.Server, health.HealthServicer]:
    """A gRPC server with the Ingest, health and reflection services (not started).

    Calls over ``max_concurrent_rpcs`` get RESOURCE_EXHAUSTED; messages over
    ``max_message_bytes`` get RESOURCE_EXHAUSTED from gRPC itself.
    """
    interceptors = [TokenInterceptor(token)] if token else []
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="grpc"),
        interceptors=interceptors,
        options=[
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", 4 << 20),
        ],
        maximum_concurrent_rpcs=max_concurrent_rpcs,
    )
    servicer = IngestServicer(store, draining)
    servicer._ack = TELEMETRY.counted_ack(servicer._ack)  # telemetry: outcomes (DASHBOARD)
    server.add_generic_rpc_handlers((_ingest_handler(servicer),))
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for name in (SERVICE_NAME, ""):
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    reflection.enable_server_reflection(
        (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server
    )
    return server, health_servicer
