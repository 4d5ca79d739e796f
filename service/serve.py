"""Run the metrics service. The data dir is locked: a second serve on it exits at once
naming the holder's pid; busy ports are reported before the write-ahead log is replayed.

The ``serve`` subcommand of :mod:`rankboard.service.cli`: its flags
(:func:`add_serve_parser`; the paragraph above is its ``--help`` description), the
service's settings they make (:func:`service_config`) and the command (:func:`serve`).
Light: torch and grpc are imported only when the service starts.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from rankboard.service.argtypes import float_where

if TYPE_CHECKING:
    from rankboard.service.server import ServiceConfig

__all__ = ["add_serve_parser", "serve", "service_config"]

# flags that ServiceConfig and StoreConfig take under their own names, as they are
_SERVICE_FIELDS = (
    "host",
    "grpc_port",
    "http_port",
    "data_dir",
    "device",
    "fsync",
    "max_message_bytes",
    "max_streams",
    "torch_threads",
    "metrics_public",
    "prometheus_max_series",
)
_STORE_FIELDS = ("max_samples_per_run", "max_samples_total", "max_runs")

_positive = float_where(lambda x: x > 0, "> 0")


def add_serve_parser(sub: argparse._SubParsersAction) -> None:
    """Register the ``serve`` subcommand (its description: this module's first paragraph)."""
    p = sub.add_parser(
        "serve",
        help="run the metrics service (gRPC ingestion + REST)",
        description=__doc__.split("\n\n")[0],
    )
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--grpc-port", type=int, default=50051, help="gRPC port (0: any free one)")
    p.add_argument("--http-port", type=int, default=8000, help="REST port (0: any free one)")
    p.add_argument(
        "--data-dir",
        default="rankboard-data",
        help="write-ahead log, checkpoints and registry (default ./rankboard-data)",
    )
    p.add_argument(
        "--device",
        default="auto",
        choices=["auto", "cpu", "cuda"],
        help="where metric state lives (auto: the GPU when there is one)",
    )
    p.add_argument(
        "--token", default=None, help="write token for ingestion and deletes (or RANKBOARD_TOKEN)"
    )
    p.add_argument(
        "--read-token", default=None, help="read token for REST (or RANKBOARD_READ_TOKEN)"
    )
    p.add_argument(
        "--fsync",
        default="batch",
        choices=["batch", "interval", "none"],
        help="when the write-ahead log is synced: every batch before its ack"
        " (default), every 50 ms, or by the OS",
    )
    p.add_argument(
        "--checkpoint-interval",
        type=float,
        default=60.0,
        help="seconds between checkpoints of all metric state (default 60); a checkpoint"
        " is also due when the log outgrows max(256 MiB, the last checkpoint)",
    )
    p.add_argument(
        "--max-samples-per-run",
        type=int,
        default=50_000_000,
        help="cap on eval samples retained per run (default 50M)",
    )
    p.add_argument(
        "--max-samples-total",
        type=int,
        default=200_000_000,
        help="cap on eval samples retained by the service (default 200M)",
    )
    p.add_argument(
        "--max-runs",
        type=int,
        default=10_000,
        help="cap on runs (experiment/arm/task/phase, train runs included; default 10k)",
    )
    p.add_argument(
        "--max-retained-mb",
        type=_positive,
        default=None,
        help="cap on the memory of metric state (retained samples, step windows, runs,"
        " producer entries), in MiB"
        " (default: half the memory of the state device)",
    )
    p.add_argument(
        "--ttl-hours",
        type=float,
        default=None,
        help="delete experiments that got no batch for this long (default: keep)",
    )
    p.add_argument(
        "--max-message-bytes",
        type=int,
        default=64 << 20,
        help="largest gRPC message accepted (default 64 MiB)",
    )
    p.add_argument(
        "--max-streams",
        type=int,
        default=4096,
        help="open ingest streams (producers) at most; more get RESOURCE_EXHAUSTED at once"
        " (default 4096; an idle stream costs no thread)",
    )
    p.add_argument(
        "--drain-timeout",
        type=float,
        default=10.0,
        help="seconds open streams get to finish on SIGTERM (default 10)",
    )
    p.add_argument(
        "--torch-threads",
        type=int,
        default=1,
        help="torch intra-op threads (default 1: concurrency comes from streams;"
        " OpenMP threads only contend with them)",
    )
    p.add_argument(
        "--prometheus-max-series",
        type=int,
        default=2000,
        help="cap on metric-value series in GET /metrics (default 2000; the metric values"
        " left out are counted in rankboard_metric_values_left_out_total)",
    )
    p.add_argument(
        "--metrics-public",
        action="store_true",
        help="serve GET /metrics without the read token (for a scraper on a trusted network)",
    )
    p.add_argument("--log-level", default="INFO")
    p.set_defaults(func=serve)


def serve(args: argparse.Namespace) -> int:
    """Run until SIGTERM / SIGINT, then drain and exit 0.

    Before anything is replayed: the data dir is locked (exit 2 naming the pid
    that holds it), the ports are checked, and ``--device cuda`` needs a GPU.
    """
    import logging
    import signal
    import threading

    from rankboard.service.datadir_lock import StartupError, preflight

    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        lock = preflight(args.data_dir, args.host, (args.grpc_port, args.http_port), args.device)
    except StartupError as err:
        print(f"rankboard serve: {err}", file=sys.stderr, flush=True)
        return 2

    from rankboard.service.server import run_service
    from rankboard.service.state.store import StateLost

    config = service_config(args)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    try:
        with lock, run_service(config) as svc:
            print(f"rankboard: gRPC on {svc.grpc_target}, REST on {svc.http_url}", flush=True)
            stop.wait()
            print("rankboard: draining", flush=True)
    except StateLost as err:
        print(f"rankboard: cannot start: {err}", file=sys.stderr, flush=True)
        return 2
    except (OSError, ValueError, RuntimeError) as err:  # a port taken meanwhile, ...
        print(f"rankboard serve: cannot start: {err}", file=sys.stderr, flush=True)
        return 2
    print("rankboard: stopped", flush=True)
    return 0


def service_config(args: argparse.Namespace) -> ServiceConfig:
    """The service's settings from ``serve``'s flags: most pass through by name
    (:data:`_SERVICE_FIELDS`, :data:`_STORE_FIELDS`); the tokens fall back to the
    environment; ``--max-retained-mb``, ``--ttl-hours`` become bytes and seconds."""
    from rankboard.service.server import ServiceConfig, env_token
    from rankboard.service.state.store import StoreConfig

    retained_mb, ttl_hours = args.max_retained_mb, args.ttl_hours
    store = StoreConfig(
        **{name: getattr(args, name) for name in _STORE_FIELDS},
        checkpoint_interval_s=args.checkpoint_interval,
        max_retained_bytes=int(retained_mb * 2**20) if retained_mb is not None else None,
        ttl_s=ttl_hours * 3600 if ttl_hours else None,
    )
    return ServiceConfig(
        **{name: getattr(args, name) for name in _SERVICE_FIELDS},
        token=env_token("RANKBOARD_TOKEN", args.token),
        read_token=env_token("RANKBOARD_READ_TOKEN", args.read_token),
        drain_timeout_s=args.drain_timeout,
        store=store,
    )
