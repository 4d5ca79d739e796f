"""The gRPC front end (grpc.aio): a thin Ingest servicer, auth, health and reflection.

Domain errors map to status codes in :func:`status_of`; a batch's error is
reported in its :class:`Ack` and the stream goes on; whole-call errors
(UNAUTHENTICATED, UNAVAILABLE while draining, RESOURCE_EXHAUSTED over
``max_streams``) end the call.

Every call is a coroutine on one event loop, so an open stream costs no thread
while it is idle: thousands of producers can stay connected. The store's ingest is
blocking (decode, checks, the log append, metric updates under its lock): a batch of
up to :data:`INLINE_MAX_BYTES` runs on the loop when the lock is free, any other in a
small bounded thread pool; one batch of a stream at a time, so a stream's batches
apply in order. An ack is written only once its batch's log record is
durable; the wait is a future resolved by the log's sync thread (no thread waits),
and acks leave in order while the next batches apply.

The module is a little over ~400 lines on purpose: the servicer, its ack ordering, where
a batch is applied (:data:`INLINE_MAX_BYTES`) and the server's assembly change together.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import hmac
import itertools
import logging
import threading
from collections.abc import AsyncIterator, Callable
from concurrent import futures
from typing import NamedTuple, Protocol

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from rankboard.protos import ingest_pb2
from rankboard.service.errors import ServiceError, ShuttingDown
from rankboard.service.state.store import IngestResult, MetricStore, Prepared
from rankboard.service.state.wal import LogFailed
from rankboard.service.telemetry import TELEMETRY

log = logging.getLogger(__name__)
SERVICE_NAME = ingest_pb2.DESCRIPTOR.services_by_name["Ingest"].full_name
MAX_STREAMS = 4096  # default of --max-streams


def status_of(err: ServiceError) -> grpc.StatusCode:
    """The gRPC status code of a domain error.

    >>> status_of(ShuttingDown("bye")).name
    'UNAVAILABLE'
    """
    return getattr(grpc.StatusCode, err.code, grpc.StatusCode.INTERNAL)


_MAX_PENDING_ACKS = 16  # batches applied per stream ahead of their log sync
# A batch up to this many wire bytes (65,536 samples with a user key are ~1 MiB) is
# applied on the event loop when the store's lock is free: handing it to a thread and
# its result back cost a quarter of the service's CPU at 8,192 samples a batch (two
# wake-ups and GIL hand-overs a batch; benchmarks/README.md, issue 17), and the store
# applies one batch at a time anyway. Larger batches, and any batch while the lock is
# held (a checkpoint taking the state, a delete), go to the ingest threads, so the loop
# never waits for the lock and blocks for a few milliseconds at most.
INLINE_MAX_BYTES = 2 << 20


class RawBatch(NamedTuple):
    """A decoded Batch with the bytes it came from (the write-ahead log stores those).

    ``msg`` is None when the bytes are not a Batch: the handler ends the call with
    INVALID_ARGUMENT (a deserializer that raised would give an opaque UNKNOWN).
    """

    msg: ingest_pb2.Batch | None
    raw: bytes

    @classmethod
    def parse(cls, raw: bytes) -> RawBatch:
        """The request deserializer of the Ingest methods."""
        try:
            return cls(ingest_pb2.Batch.FromString(raw), raw)
        except Exception:  # noqa: BLE001 - DecodeError, or worse: refused the same way
            return cls(None, raw)


_UNDECODABLE = "the message is not a valid rankboard.v1.Batch (protobuf wire format)"


def _discard(fut: asyncio.Future) -> None:
    """Cancel ``fut``, or retrieve its outcome if it is done (no "never retrieved" noise)."""
    if not fut.done():
        fut.cancel()
    elif not fut.cancelled():
        fut.exception()


class SyncSource(Protocol):
    """What :class:`DurableWaiter` watches: the store (or its log) reporting syncs."""

    def add_sync_listener(self, fn: Callable[[int, OSError | None], None]) -> None: ...

    def is_durable(self, lsn: int) -> bool: ...


class DurableWaiter:
    """Futures on the event loop that resolve once a log position is durable.

    The log's sync thread reports each sync (:meth:`WriteAheadLog.add_listener`); the
    report is handed to the loop, which resolves every future at or below it. A failed
    sync fails them all with :class:`LogFailed` (nothing more is acknowledged).
    """

    def __init__(self, store: SyncSource, loop: asyncio.AbstractEventLoop) -> None:
        self._store = store
        self._loop = loop
        self._heap: list[tuple[int, int, asyncio.Future]] = []
        self._order = itertools.count()
        self._failed: OSError | None = None
        store.add_sync_listener(self._on_sync)

    def _on_sync(self, synced: int, failure: OSError | None) -> None:  # any thread
        if not self._loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                self._loop.call_soon_threadsafe(self._release, synced, failure)

    def _release(self, synced: int, failure: OSError | None) -> None:
        if failure is not None:
            self._failed = failure
        while self._heap and (self._failed is not None or self._heap[0][0] <= synced):
            _, _, fut = heapq.heappop(self._heap)
            if fut.done():
                continue
            if self._failed is not None:
                fut.set_exception(LogFailed(f"the write-ahead log failed: {self._failed}"))
            else:
                fut.set_result(None)

    async def wait(self, lsn: int) -> None:
        """Return once ``lsn`` is durable; raise :class:`LogFailed` if it cannot be."""
        if not self._store.is_durable(lsn):
            if self._failed is not None:
                raise LogFailed(f"the write-ahead log failed: {self._failed}")
            fut = self._loop.create_future()
            heapq.heappush(self._heap, (lsn, next(self._order), fut))
            if self._store.is_durable(lsn):  # synced before the future was registered
                self._release(lsn, None)
            await fut
            self._store.is_durable(lsn)  # records the batch's ack latency (telemetry, DASHBOARD)


class IngestServicer:
    """Applies batches to the store and acknowledges each one (an asyncio servicer)."""

    def __init__(
        self,
        store: MetricStore,
        draining: threading.Event,
        *,
        max_streams: int = MAX_STREAMS,
        ingest_workers: int = 4,
    ) -> None:
        self._store = store
        self._draining = draining
        self.max_streams = max_streams
        self.open_streams = 0
        self._pool = futures.ThreadPoolExecutor(ingest_workers, thread_name_prefix="ingest")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._durable: DurableWaiter | None = None
        self._drain: asyncio.Event | None = None

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        """Attach to the event loop the server runs on (call from that loop)."""
        self._loop = loop
        self._durable = DurableWaiter(self._store, loop)
        self._drain = asyncio.Event()

    def start_draining(self) -> None:
        """End idle streams now and refuse new ones (call from the loop)."""
        self._draining.set()
        if self._drain is not None:
            self._drain.set()

    def close(self) -> None:
        """Stop the ingest threads (after the server stopped)."""
        self._pool.shutdown(wait=True)

    def _answer(
        self, msg: ingest_pb2.Batch, work: Callable[[], IngestResult | None]
    ) -> tuple[ingest_pb2.Ack, int] | None:
        """Run ``work``, one ingest step of ``msg``, and make its ack and the log position
        the ack waits for; None when ``work`` returned None (the store was busy)."""
        ack = ingest_pb2.Ack(producer_id=msg.producer_id, sequence=msg.sequence)
        try:
            result = work()
        except ShuttingDown:
            raise
        except ServiceError as err:
            ack.error_code = status_of(err).value[0]
            ack.error_message = str(err)
            return ack, 0
        except Exception as err:
            log.exception("batch %s/%d failed", msg.producer_id, msg.sequence)
            ack.error_code = grpc.StatusCode.INTERNAL.value[0]
            ack.error_message = f"internal error: {err}"
            return ack, 0
        if result is None:
            return None
        ack.duplicate = result.duplicate
        ack.samples = result.samples
        return ack, result.lsn

    def _ack(
        self, request: ingest_pb2.Batch | RawBatch, wait: bool = True
    ) -> tuple[ingest_pb2.Ack, int]:
        """Apply one batch (blocking); return its ack and the log position it waits for."""
        if isinstance(request, RawBatch):
            batch, raw = request.msg, request.raw
            if batch is None:  # the stream handlers refuse undecodable bytes before this
                raise ValueError("an undecodable batch reached the store")
        else:
            batch, raw = request, None
        answer = self._answer(batch, lambda: self._store.ingest(batch, raw=raw, wait=wait))
        assert answer is not None  # a blocking ingest always answers
        return answer

    async def _apply(self, request: RawBatch) -> tuple[ingest_pb2.Ack, int]:
        """Apply ``request``: here on the event loop when it is small and the store is
        free, else on an ingest thread (see :data:`INLINE_MAX_BYTES`)."""
        assert self._loop is not None and request.msg is not None
        if len(request.raw) > INLINE_MAX_BYTES:
            return await self._loop.run_in_executor(self._pool, self._ack, request, False)
        msg, store = request.msg, self._store
        prepared: list[Prepared] = []

        def inline() -> IngestResult | None:
            prepared.append(store.prepare(msg, request.raw))
            return store.commit(prepared[0], wait=False, blocking=False)

        answer = self._answer(msg, inline)
        if answer is not None:
            return answer
        # the lock is held (a checkpoint taking its state, a delete): wait on a thread
        late = await self._loop.run_in_executor(
            self._pool, self._answer, msg, lambda: store.commit(prepared[0], wait=False)
        )
        assert late is not None  # a blocking commit always answers
        return late

    async def Stream(
        self, request_iterator: AsyncIterator[RawBatch], context: grpc.aio.ServicerContext
    ) -> None:
        """One ack per batch, in order, each once its batch is durable."""
        if self._draining.is_set():
            await context.abort(grpc.StatusCode.UNAVAILABLE, "the service is shutting down")
        if self.open_streams >= self.max_streams:
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"{self.open_streams} ingest streams are open, the limit"
                " (rankboard serve --max-streams); retry later or share a stream",
            )
        self.open_streams += 1
        TELEMETRY.open_streams.add(1)  # telemetry (DASHBOARD)
        try:
            await self._stream(request_iterator, context)
        finally:
            self.open_streams -= 1
            TELEMETRY.open_streams.add(-1)  # telemetry (DASHBOARD)

    async def _stream(
        self, request_iterator: AsyncIterator[RawBatch], context: grpc.aio.ServicerContext
    ) -> None:
        assert self._durable is not None and self._drain is not None
        durable = self._durable
        # acks wait for the log sync of their batch; meanwhile the next batches apply
        acks: asyncio.Queue[tuple[ingest_pb2.Ack, int] | None] = asyncio.Queue(_MAX_PENDING_ACKS)
        in_flight = 0  # batches applied whose ack is not written yet
        idle = asyncio.Event()  # set while in_flight == 0
        idle.set()

        async def writer() -> None:
            nonlocal in_flight
            while (item := await acks.get()) is not None:
                ack, lsn = item
                if lsn:
                    await durable.wait(lsn)
                await context.write(ack)
                in_flight -= 1
                if in_flight == 0:
                    idle.set()

        write_task = asyncio.create_task(writer())
        drained = asyncio.create_task(self._drain.wait())
        requests = aiter(request_iterator)
        try:
            while True:
                nxt = asyncio.ensure_future(anext(requests))
                while not (nxt.done() or write_task.done()):
                    # while draining, an idle stream ends: the producer reconnects later
                    stop = drained if not drained.done() else asyncio.create_task(idle.wait())
                    await asyncio.wait({nxt, write_task, stop}, return_when=asyncio.FIRST_COMPLETED)
                    if stop is not drained:
                        stop.cancel()
                    if drained.done() and in_flight == 0 and not nxt.done():
                        _discard(nxt)
                        await acks.put(None)
                        await write_task
                        return
                if write_task.done():  # the writer failed (log failure, call gone)
                    _discard(nxt)
                    write_task.result()
                    return
                try:
                    request = nxt.result()
                except StopAsyncIteration:
                    break
                if request.msg is None:
                    await acks.put(None)
                    await write_task  # the acks of the batches before it, then the error
                    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, _UNDECODABLE)
                in_flight += 1
                idle.clear()
                await acks.put(await self._apply(request))
            await acks.put(None)
            await write_task
        except ShuttingDown as err:
            await context.abort(grpc.StatusCode.UNAVAILABLE, str(err))
        finally:
            drained.cancel()
            if not write_task.done():
                write_task.cancel()

    async def Send(self, request: RawBatch, context: grpc.aio.ServicerContext) -> ingest_pb2.Ack:
        """A single batch."""
        assert self._durable is not None
        if request.msg is None:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, _UNDECODABLE)
        try:
            ack, lsn = await self._apply(request)
            if lsn:
                await self._durable.wait(lsn)
            return ack
        except ShuttingDown as err:
            await context.abort(grpc.StatusCode.UNAVAILABLE, str(err))
            raise  # unreachable: abort raises


def _ingest_handler(servicer: IngestServicer) -> grpc.GenericRpcHandler:
    """Ingest's method handlers, keeping each request's wire bytes (no re-serialization)."""
    ack = ingest_pb2.Ack.SerializeToString
    return grpc.method_handlers_generic_handler(
        SERVICE_NAME,
        {
            "Stream": grpc.stream_stream_rpc_method_handler(
                servicer.Stream, request_deserializer=RawBatch.parse, response_serializer=ack
            ),
            "Send": grpc.unary_unary_rpc_method_handler(
                servicer.Send, request_deserializer=RawBatch.parse, response_serializer=ack
            ),
        },
    )


async def _deny(request: object, context: grpc.aio.ServicerContext) -> None:
    await context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong write token")


class TokenInterceptor(grpc.aio.ServerInterceptor):
    """Requires ``authorization: Bearer <token>`` on the Ingest service's methods."""

    def __init__(self, token: str) -> None:
        self._expected = f"Bearer {token}".encode()
        self._deny_unary: grpc.RpcMethodHandler = grpc.unary_unary_rpc_method_handler(_deny)
        self._deny_stream: grpc.RpcMethodHandler = grpc.stream_stream_rpc_method_handler(_deny)

    async def intercept_service(self, continuation, handler_call_details):
        method = handler_call_details.method
        if not method.startswith(f"/{SERVICE_NAME}/"):
            return await continuation(handler_call_details)
        metadata = dict(handler_call_details.invocation_metadata or ())
        given = metadata.get("authorization", "")
        given = given if isinstance(given, bytes) else str(given).encode()
        if hmac.compare_digest(given, self._expected):
            return await continuation(handler_call_details)
        return self._deny_stream if method.endswith("/Stream") else self._deny_unary


def build_grpc_server(
    store: MetricStore,
    draining: threading.Event,
    *,
    token: str | None = None,
    max_message_bytes: int = 64 << 20,
    max_streams: int = MAX_STREAMS,
    max_concurrent_rpcs: int | None = None,
    ingest_workers: int = 4,
) -> tuple[grpc.aio.Server, health.aio.HealthServicer, IngestServicer]:
    """A grpc.aio server with the Ingest, health and reflection services (not started).

    Call it on the event loop the server will run on. Streams over ``max_streams``
    get RESOURCE_EXHAUSTED at once; calls of any kind over ``max_concurrent_rpcs``
    (default ``max_streams`` + 1024) get RESOURCE_EXHAUSTED from gRPC; messages over
    ``max_message_bytes`` get RESOURCE_EXHAUSTED from gRPC itself.
    """
    interceptors = [TokenInterceptor(token)] if token else []
    server = grpc.aio.server(
        interceptors=interceptors,
        options=[
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", 4 << 20),
        ],
        maximum_concurrent_rpcs=(
            max_concurrent_rpcs if max_concurrent_rpcs is not None else max_streams + 1024
        ),
    )
    servicer = IngestServicer(
        store, draining, max_streams=max_streams, ingest_workers=ingest_workers
    )
    servicer.bind(asyncio.get_running_loop())
    # telemetry: every ack's outcome counted, one wrapper around the servicer's one path
    servicer._answer = TELEMETRY.counted_ack(servicer._answer)  # type: ignore[method-assign]
    server.add_generic_rpc_handlers((_ingest_handler(servicer),))
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server
    )
    return server, health_servicer, servicer


async def set_serving(health_servicer: health.aio.HealthServicer, serving: bool) -> None:
    """Mark the Ingest service and the server as a whole serving or not."""
    status = (
        health_pb2.HealthCheckResponse.SERVING
        if serving
        else health_pb2.HealthCheckResponse.NOT_SERVING
    )
    for name in (SERVICE_NAME, ""):
        await health_servicer.set(name, status)
