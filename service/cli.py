"""The ``rankboard`` command: ``serve`` the service, ``send`` a file, ``compare`` arms.

Example::

    rankboard serve --grpc-port 50051 --http-port 8000 --data-dir ./rankboard-data
    rankboard send preds.csv --target 127.0.0.1:50051 --experiment exp1 \\
        --arm-col arm --task ctr --phase eval --step 1000 --group-col user_id
    rankboard compare --url http://127.0.0.1:8000 --experiment exp1 --task ctr \\
        --baseline control

Arguments are parsed before anything heavy (torch, grpc, numpy) is imported, so
``--help`` and a mistyped flag answer at once; a subcommand's error shows that
subcommand's usage.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

__all__ = ["build_parser", "main"]


class _SubcommandParser(argparse.ArgumentParser):
    """A subcommand parser that reports its own unknown arguments with its own usage.

    (argparse hands a subcommand's unknown flags up to the top-level parser, whose
    usage line says nothing about the subcommand's flags.)
    """

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        ns, extras = super().parse_known_args(args, namespace)
        if extras:
            self.error(f"unrecognized arguments: {' '.join(extras)}")
        return ns, extras


def _positive(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {value!r}") from None
    if not number > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {value}")
    return number


def _serve_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve",
        help="run the metrics service (gRPC ingestion + REST)",
        description="Run the metrics service. The data dir is locked: a second serve on"
        " it exits at once naming the holder's pid; busy ports are reported before the"
        " write-ahead log is replayed.",
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

    from rankboard.service.server import ServiceConfig, env_token, run_service
    from rankboard.service.state.store import StateLost, StoreConfig

    config = ServiceConfig(
        host=args.host,
        grpc_port=args.grpc_port,
        http_port=args.http_port,
        data_dir=args.data_dir,
        device=args.device,
        token=env_token("RANKBOARD_TOKEN", args.token),
        read_token=env_token("RANKBOARD_READ_TOKEN", args.read_token),
        fsync=args.fsync,
        max_message_bytes=args.max_message_bytes,
        max_streams=args.max_streams,
        drain_timeout_s=args.drain_timeout,
        torch_threads=args.torch_threads,
        metrics_public=args.metrics_public,
        prometheus_max_series=args.prometheus_max_series,
        store=StoreConfig(
            checkpoint_interval_s=args.checkpoint_interval,
            max_samples_per_run=args.max_samples_per_run,
            max_samples_total=args.max_samples_total,
            max_runs=args.max_runs,
            max_retained_bytes=(
                int(args.max_retained_mb * 2**20) if args.max_retained_mb is not None else None
            ),
            ttl_s=args.ttl_hours * 3600 if args.ttl_hours else None,
        ),
    )
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


def build_parser(full: bool = False) -> argparse.ArgumentParser:
    """The ``rankboard`` argument parser.

    Light by default: ``repair`` (whose module loads torch) is listed by a
    placeholder; ``full=True`` (what :func:`main` uses when the command is
    ``repair``) registers its real parser.

    >>> build_parser().parse_args(["compare", "--experiment", "e", "--task", "t",
    ...                            "--baseline", "a"]).alpha
    0.05
    """
    from rankboard.service.compare import add_compare_parser
    from rankboard.service.send import add_send_parser

    parser = argparse.ArgumentParser(
        prog="rankboard",
        description="rankboard: serve the metrics service, send a file of predictions,"
        " compare the arms of an experiment.",
    )
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_SubcommandParser)
    _serve_parser(sub)
    add_send_parser(sub)
    if full:
        from rankboard.service.state.repair import add_repair_parser  # RELIABILITY

        add_repair_parser(sub)
    else:
        sub.add_parser("repair", help="check or repair a data dir (rankboard repair --help)")
    add_compare_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``rankboard`` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser(full=bool(argv) and argv[0] == "repair").parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
