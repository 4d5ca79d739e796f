"""The service process: the store, the gRPC server and the REST server together.

Example (in-process, as the tests and the demo use it)::

    >>> import tempfile
    >>> tmp = tempfile.TemporaryDirectory()
    >>> with run_service(ServiceConfig(data_dir=tmp.name)) as svc:
    ...     svc.grpc_target.startswith("127.0.0.1:"), svc.http_url.startswith("http://")
    (True, True)
    >>> tmp.cleanup()
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import logging
import os
import socket
import threading
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import torch
import uvicorn

from rankboard.service.grpc_api import MAX_STREAMS, build_grpc_server, set_serving
from rankboard.service.rest import create_app
from rankboard.service.state.store import MetricStore, StoreConfig

log = logging.getLogger(__name__)
T = TypeVar("T")


def resolve_device(device: str) -> str:
    """``auto`` becomes ``cuda`` when a GPU is there, else ``cpu``; ``cuda`` without one fails.

    >>> resolve_device("cpu")
    'cpu'
    """
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is available (use auto or cpu)")
    if device not in ("cpu", "cuda"):
        raise ValueError(f"--device must be auto, cpu or cuda, not {device!r}")
    return device


GC_THRESHOLD = (10_000, 10, 100)


@dataclass
class ServiceConfig:
    """Everything ``rankboard serve`` takes; port 0 picks a free port."""

    host: str = "127.0.0.1"
    grpc_port: int = 0
    http_port: int = 0
    data_dir: str | Path = "rankboard-data"
    device: str = "auto"
    token: str | None = None
    read_token: str | None = None
    fsync: str = "batch"
    max_message_bytes: int = 64 << 20
    max_streams: int = MAX_STREAMS  # open Ingest streams; more get RESOURCE_EXHAUSTED
    max_concurrent_rpcs: int | None = None  # calls of any kind (None: max_streams + 1024)
    ingest_workers: int = 4  # threads that run the store's blocking ingest
    drain_timeout_s: float = 10.0
    torch_threads: int | None = None
    # the store's settings (caps, checkpoints, TTL); its data_dir, device and fsync are the
    # service's own fields above
    store: StoreConfig = field(default_factory=StoreConfig)
    metrics_public: bool = False  # GET /metrics without the read token
    prometheus_max_series: int = 2000  # cap on metric-value series in GET /metrics
    # Python's cyclic GC thresholds while the service runs (None: leave them). Retained
    # chunks are tensors the collector walks: with the default (700, 10, 10) a full
    # collection took 150-200 ms every 2 s under load, holding the GIL (9 % of the
    # service's CPU, and its ack p99). Young cycles are still collected every GC_THRESHOLD[0]
    # allocations; the old generation far more rarely.
    gc_threshold: tuple[int, int, int] | None = GC_THRESHOLD


class Service:
    """A running service; :meth:`stop` drains it."""

    def __init__(self, config: ServiceConfig) -> None:
        self.config = config
        self._gc_before: tuple[int, ...] | None = None
        if config.torch_threads:
            # many small updates from concurrent streams: intra-op threads only contend
            torch.set_num_threads(config.torch_threads)
        device = resolve_device(config.device)
        self.store = MetricStore(
            dataclasses.replace(
                config.store, data_dir=config.data_dir, device=device, fsync=config.fsync
            )
        )
        self.draining = threading.Event()
        # gRPC runs on its own event loop thread (grpc.aio: idle streams hold no thread)
        self._loop = asyncio.new_event_loop()
        self._loop_thread = threading.Thread(
            target=self._loop.run_forever, name="grpc-loop", daemon=True
        )
        self._loop_thread.start()
        try:
            self._grpc, self._health, self._ingest = self._on_loop(self._build_grpc())
            self.grpc_port = self._on_loop(self._bind_grpc())
        except BaseException:
            self._stop_loop()
            self.store.close()
            raise
        family = socket.AF_INET6 if ":" in config.host else socket.AF_INET
        # IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on accepted sockets whose
        # proto says TCP; without it Nagle + delayed ACKs add 40 ms to every response
        self._sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind((config.host, config.http_port))
        self.http_port = self._sock.getsockname()[1]
        app = create_app(
            self.store,
            read_token=config.read_token,
            write_token=config.token,
            metrics_public=config.metrics_public,
            prometheus_max_series=config.prometheus_max_series,
        )
        self._http = uvicorn.Server(
            uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off")
        )
        self._http_thread = threading.Thread(target=self._serve_http, name="http", daemon=True)
        self.device = device

    def _on_loop(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run ``coro`` on the gRPC event loop; return its result."""
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    async def _build_grpc(self) -> tuple:
        config = self.config
        return build_grpc_server(
            self.store,
            self.draining,
            token=config.token,
            max_message_bytes=config.max_message_bytes,
            max_streams=config.max_streams,
            max_concurrent_rpcs=config.max_concurrent_rpcs,
            ingest_workers=config.ingest_workers,
        )

    async def _bind_grpc(self) -> int:
        config = self.config
        port = self._grpc.add_insecure_port(f"{config.host}:{config.grpc_port}")
        if port == 0:
            raise OSError(f"cannot bind gRPC to {config.host}:{config.grpc_port}")
        return port

    async def _start_grpc(self) -> None:
        await self._grpc.start()
        await set_serving(self._health, True)

    async def _drain_grpc(self) -> None:
        self._ingest.start_draining()
        await set_serving(self._health, False)
        await self._health.enter_graceful_shutdown()
        await self._grpc.stop(grace=self.config.drain_timeout_s)

    def _stop_loop(self) -> None:
        if self._loop.is_running():
            self._loop.call_soon_threadsafe(self._loop.stop)
        self._loop_thread.join(timeout=10)
        if not self._loop.is_running():
            self._loop.close()

    @property
    def grpc_target(self) -> str:
        """``host:port`` of the gRPC server."""
        return f"{_url_host(self.config.host)}:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        """Base URL of the REST server."""
        return f"http://{_url_host(self.config.host)}:{self.http_port}"

    def _serve_http(self) -> None:
        self._http.run(sockets=[self._sock])  # uvicorn's loop (uvloop when installed)

    def start(self) -> Service:
        """Start both servers; return when they accept connections."""
        if self.config.gc_threshold is not None:
            self._gc_before = gc.get_threshold()
            gc.set_threshold(*self.config.gc_threshold)
        self._on_loop(self._start_grpc())
        self._http_thread.start()
        while not self._http.started:
            if not self._http_thread.is_alive():
                raise RuntimeError("the REST server failed to start")
            threading.Event().wait(0.01)
        log.info(
            "rankboard: gRPC on %s, REST on %s (device %s, data %s)",
            self.grpc_target,
            self.http_url,
            self.device,
            self.config.data_dir,
        )
        return self

    def stop(self) -> None:
        """Drain: refuse new streams, let open ones get their acks, sync the log, stop."""
        if self.draining.is_set():
            return
        self.draining.set()
        try:
            self._on_loop(self._drain_grpc(), timeout=self.config.drain_timeout_s + 5)
        except Exception:
            log.exception("gRPC drain failed")
        self._ingest.close()
        self.store.close()
        self._stop_loop()
        self._http.should_exit = True
        self._http_thread.join(timeout=5)
        with contextlib.suppress(OSError):
            self._sock.close()
        if self._gc_before is not None:  # as the process had it
            gc.set_threshold(*self._gc_before)
            self._gc_before = None

    def wait(self) -> None:
        """Block until the gRPC server terminates."""
        self._on_loop(self._grpc.wait_for_termination())


def _url_host(host: str) -> str:
    if host in ("0.0.0.0", ""):
        return "127.0.0.1"
    return f"[{host}]" if ":" in host else host


@contextlib.contextmanager
def run_service(config: ServiceConfig) -> Iterator[Service]:
    """Start a service for the block, stop (drain) it after."""
    svc = Service(config).start()
    try:
        yield svc
    finally:
        svc.stop()


def env_token(name: str, given: str | None) -> str | None:
    """``given`` or the environment variable ``name`` (empty means none)."""
    return given or os.environ.get(name) or None
