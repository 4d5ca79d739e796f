"""The floor of ingestion CPU per sample: servers that do strictly less than rankboard.

Issue #17 asks that the service spend at most 3x (65,536-sample batches) / 4x (8,192-sample
batches) the CPU per sample of the bare in-process metric update. This benchmark measures
what any service of this architecture pays before it does rankboard's own work, with the
producer, the batches, the CPU reading and the in-process baseline of
``bench_service.py`` (imported, not copied), against server processes started fresh:

* ``grpc`` (F0): a grpc.aio server with the Ingest service's Stream and Send methods
  registered through a generic handler with a raw-bytes deserializer; the handler does
  ``Batch.FromString(raw)`` and replies ``Ack(producer_id, sequence, samples)`` at once
  (no log, no metrics).
* ``grpc+log`` (F1): F0 plus the raw bytes appended to rankboard's real
  ``WriteAheadLog`` (record ``RECORD_BATCH``, fsync policy ``batch`` as
  ``rankboard serve --fsync batch``), the ack written only once the record is durable
  (the log's sync listener resolves a future on the event loop, as ``grpc_api`` does;
  the next batches are read and appended meanwhile, up to 16 acks pending).
* ``grpc+log+decode`` (F2): F1 plus ``decode_batch(msg)`` before the append (torch on
  one thread, as ``rankboard serve``'s default ``--torch-threads 1``).
* ``full``: the real ``rankboard serve`` (the command ``bench_service.py`` starts).

The floor servers do their work on the event loop (no ingest thread pool: a thread hop is
more work, not less) and set the service's GC thresholds. Each variant is a fresh process;
its CPU (user + system of every thread, ``/proc/<pid>/stat``) is read across the same
timed window as ``bench_service.py``'s (from the producer's start to its last ack) and
divided by the samples acknowledged. Every variant must acknowledge every batch it was
sent: the floor servers report what they received on exit, the full service the samples
its run holds (REST); a mismatch or an error ack fails the benchmark (exit status 1).

One producer (``bench_service.producer``: pre-encoded batches with a grouping key, one
``Ingest/Stream``). The in-process baseline (``bench_service.in_process_baseline``) is
measured once per batch size and repeat, in the same run; the ratios are against it.
Progress and a table go to stderr, one JSON document to stdout.

Examples::

    # both batch sizes, 6 s per variant (about 2 minutes on 2 cores)
    .venv/bin/python benchmarks/bench_floor.py --duration 6
    # 64k only, 3 repeats, only the floor servers
    .venv/bin/python benchmarks/bench_floor.py --batch 65536 --repeat 3 \\
        --variants grpc grpc+log grpc+log+decode
    # one floor server by hand (what the benchmark starts; SIGTERM stops it)
    .venv/bin/python benchmarks/bench_floor.py --serve grpc+log --port 50051 --data-dir /tmp/f1
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import multiprocessing as mp
import os
import queue
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_service as bs  # the sibling benchmark, found through the line above

FLOORS = ("grpc", "grpc+log", "grpc+log+decode")
VARIANTS = (*FLOORS, "full")
LABELS = {
    "grpc": "F0 grpc",
    "grpc+log": "F1 grpc+log",
    "grpc+log+decode": "F2 grpc+log+decode",
    "full": "FULL rankboard serve",
}
MAX_PENDING_ACKS = 16  # as grpc_api: batches read and logged ahead of their sync
READY = "gRPC on"  # the first stdout line of every server, rankboard serve's included


# ---------------------------------------------------------------------------------------
# the floor servers (``--serve VARIANT``)
# ---------------------------------------------------------------------------------------


class LogSyncs:
    """The log as :class:`rankboard.service.grpc_api.DurableWaiter` watches it (the service
    hands it the store, which reports the same two things)."""

    def __init__(self, wal: Any) -> None:
        self.add_sync_listener = wal.add_listener
        self.is_durable = wal.is_durable


class FloorIngest:
    """The Ingest methods of a floor server: parse (F0), + log (F1), + decode (F2)."""

    def __init__(self, variant: str, data_dir: Path, loop: asyncio.AbstractEventLoop) -> None:
        from rankboard.protos import ingest_pb2, wire

        self._ack_type = ingest_pb2.Ack
        self._itemsize = {code: dt.itemsize for code, dt in wire.DTYPES.items()}
        self.counts = {"batches": 0, "samples": 0, "bytes": 0, "acks": 0}
        self._decode = None
        self._wal = None
        self._durable: Any = None
        if variant in ("grpc+log", "grpc+log+decode"):
            from rankboard.service.state.wal import RECORD_BATCH, WriteAheadLog

            self._record = RECORD_BATCH
            self._wal = WriteAheadLog(data_dir / "wal", "batch")  # rankboard serve --fsync batch
            from rankboard.service.grpc_api import DurableWaiter

            self._durable = DurableWaiter(LogSyncs(self._wal), loop)
        if variant == "grpc+log+decode":
            import torch

            from rankboard.service.state.batch import decode_batch

            torch.set_num_threads(1)  # rankboard serve's default --torch-threads
            self._decode = decode_batch

    def close(self) -> None:
        if self._wal is not None:
            self._wal.close()

    def _take(self, request: tuple[Any, bytes]) -> tuple[Any, int]:
        """One batch's work before its ack: its ack and the log position it waits for."""
        msg, raw = request
        if self._decode is not None:
            samples = self._decode(msg).num_samples
        else:  # the labels' length, read off the wire buffer
            samples = len(msg.labels.data) // self._itemsize.get(msg.labels.dtype, 1)
        lsn = 0
        if self._wal is not None:
            lsn = self._wal.append(self._record, raw, wait=False)
        self.counts["batches"] += 1
        self.counts["samples"] += samples
        self.counts["bytes"] += len(raw)
        ack = self._ack_type(producer_id=msg.producer_id, sequence=msg.sequence, samples=samples)
        return ack, lsn

    async def Stream(self, requests: Any, context: Any) -> None:
        if self._durable is None:  # F0: the ack at once
            async for request in requests:
                ack, _ = self._take(request)
                await context.write(ack)
                self.counts["acks"] += 1
            return
        durable = self._durable
        pending: asyncio.Queue[tuple[Any, int] | None] = asyncio.Queue(MAX_PENDING_ACKS)

        async def writer() -> None:
            while (item := await pending.get()) is not None:
                ack, lsn = item
                await durable.wait(lsn)
                await context.write(ack)
                self.counts["acks"] += 1

        task = asyncio.create_task(writer())
        try:
            async for request in requests:
                await pending.put(self._take(request))
            await pending.put(None)
            await task
        finally:
            task.cancel()

    async def Send(self, request: tuple[Any, bytes], context: Any) -> Any:
        ack, lsn = self._take(request)
        if self._durable is not None:
            await self._durable.wait(lsn)
        self.counts["acks"] += 1
        return ack


async def serve_floor(variant: str, port: int, data_dir: Path) -> dict[str, int]:
    """Run floor server ``variant`` until SIGTERM; return what it received and acked."""
    import grpc

    from rankboard.protos import ingest_pb2
    from rankboard.service.server import GC_THRESHOLD

    gc.set_threshold(*GC_THRESHOLD)  # as rankboard serve
    loop = asyncio.get_running_loop()
    ingest = FloorIngest(variant, data_dir, loop)
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", 64 << 20),  # as rankboard serve
            ("grpc.max_send_message_length", 4 << 20),
        ]
    )
    name = ingest_pb2.DESCRIPTOR.services_by_name["Ingest"].full_name
    ack = ingest_pb2.Ack.SerializeToString
    parse_batch = ingest_pb2.Batch.FromString

    def parse_raw(raw: bytes) -> tuple[Any, bytes]:
        """The request deserializer: the message and the bytes it came from (as RawBatch)."""
        return parse_batch(raw), raw

    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                name,
                {
                    "Stream": grpc.stream_stream_rpc_method_handler(
                        ingest.Stream, request_deserializer=parse_raw, response_serializer=ack
                    ),
                    "Send": grpc.unary_unary_rpc_method_handler(
                        ingest.Send, request_deserializer=parse_raw, response_serializer=ack
                    ),
                },
            ),
        )
    )
    bound = server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    print(f"floor {variant}: {READY} 127.0.0.1:{bound}", flush=True)
    await stop.wait()
    await server.stop(grace=5)
    ingest.close()
    return ingest.counts


# ---------------------------------------------------------------------------------------
# the benchmark
# ---------------------------------------------------------------------------------------


def server_command(variant: str, port: int, data: str, http_port: int) -> list[str]:
    """The command line of ``variant``'s server; ``full`` is bench_service's own."""
    if variant == "full":
        return bs.serve_command(port, http_port, data, "batch")
    return [
        sys.executable,
        str(Path(__file__).resolve()),
        "--serve",
        variant,
        "--port",
        str(port),
        "--data-dir",
        data,
    ]


def collect(q: Any, proc: Any, duration: float) -> dict[str, Any]:
    """The producer's report, with a progress bar over the timed part; an error if the
    producer died without one (a call the server ended, say)."""
    from tqdm import tqdm

    start = time.monotonic()
    with tqdm(total=round(duration), desc="load", unit="s", leave=False) as bar:
        while True:
            try:
                return q.get(timeout=0.5)
            except queue.Empty:
                if proc.exitcode is not None:
                    with contextlib.suppress(queue.Empty):
                        return q.get(timeout=2)
                    raise RuntimeError(
                        f"the producer exited ({proc.exitcode}) without a report"
                    ) from None
            bar.n = min(round(time.monotonic() - start), bar.total)
            bar.refresh()


def run_samples(http_port: int) -> int:
    """Samples the full service holds for the producer's experiment (REST)."""
    url = f"http://127.0.0.1:{http_port}/v1/experiments/bench"
    with urllib.request.urlopen(url, timeout=60) as r:
        return int(json.load(r)["samples"])


def measure(variant: str, n: int, duration: float, base: dict[str, float]) -> dict[str, Any]:
    """One producer for ``duration`` seconds against a fresh ``variant`` server."""
    port, http_port = bs.free_port(), bs.free_port()
    with tempfile.TemporaryDirectory() as data:
        proc = subprocess.Popen(
            server_command(variant, port, data, http_port), stdout=subprocess.PIPE, text=True
        )
        received: dict[str, int] = {}
        try:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            if READY not in line:
                raise RuntimeError(f"{variant} did not start: {line!r}")
            ctx = mp.get_context("spawn")
            q = ctx.Queue()
            ready = ctx.Barrier(2)
            prod = ctx.Process(
                target=bs.producer,
                args=(f"127.0.0.1:{port}", 0, duration, n, q, "control", None, None, ready),
            )
            prod.start()
            ready.wait(timeout=300)  # the producer built its batches: the timed part starts
            cpu0, wall0 = bs.process_cpu_seconds(proc.pid), time.perf_counter()
            result = collect(q, prod, duration)
            cpu = bs.process_cpu_seconds(proc.pid) - cpu0
            wall = time.perf_counter() - wall0
            prod.join()
            if variant == "full":
                received = {"samples": run_samples(http_port)}
        finally:
            proc.send_signal(signal.SIGTERM)
            out, _ = proc.communicate(timeout=60)
        if variant != "full":
            received = json.loads(out.strip().splitlines()[-1])
    samples, acks = result["samples"], len(result["latencies"])
    complete = (
        result["errors"] == 0
        and acks > 0
        and received.get("samples") == samples
        and received.get("batches", acks) == acks
        and received.get("acks", acks) == acks
    )
    per_sample = cpu / samples if samples else float("nan")
    return {
        "variant": variant,
        "batch": n,
        "service_cpu_s": cpu,
        "service_wall_s": wall,
        "service_cpu_ns_per_sample": per_sample * 1e9,
        "in_process_cpu_ns_per_sample": base["cpu_s_per_sample"] * 1e9,
        "cpu_ratio_to_in_process": per_sample / base["cpu_s_per_sample"],
        "samples_per_s": samples / result["seconds"],
        "samples_acked": samples,
        "batches_acked": acks,
        "server_received": received,
        "complete": complete,
        "ack_ms": {"p50": bs.pct(result["latencies"], 50), "p99": bs.pct(result["latencies"], 99)},
        "errors": result["errors"],
        "exit_code": proc.returncode,
    }


def summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Median over the repeats of one variant's figures."""

    def med(key: str) -> float:
        return float(np.median([r[key] for r in runs]))

    return {
        "service_cpu_ns_per_sample": med("service_cpu_ns_per_sample"),
        "cpu_ratio_to_in_process": med("cpu_ratio_to_in_process"),
        "cpu_ratio_repeats": [r["cpu_ratio_to_in_process"] for r in runs],
        "samples_per_s": med("samples_per_s"),
        "ack_ms": {
            "p50": float(np.median([r["ack_ms"]["p50"] or np.nan for r in runs])),
            "p99": float(np.median([r["ack_ms"]["p99"] or np.nan for r in runs])),
        },
        "batches_acked": sum(r["batches_acked"] for r in runs),
        "errors": sum(r["errors"] for r in runs),
        "complete": all(r["complete"] for r in runs),
        "repeats": runs,
    }


def table(report: dict[str, Any]) -> str:
    """The human table (medians over the repeats)."""
    head = (
        f"{'batch':>6}  {'variant':<21} {'ns/sample':>9} {'x base':>7} {'Msamples/s':>10}"
        f" {'ack p50':>8} {'ack p99':>8} {'batches':>7} {'err':>3}  ok"
    )
    lines = [head, "-" * len(head)]
    for size in report["sizes"]:
        base = size["baseline"]
        lines.append(
            f"{size['batch']:>6}  {'in-process baseline':<21}"
            f" {base['cpu_ns_per_sample']:>9.1f} {1.0:>7.2f}"
            f" {base['samples_per_s'] / 1e6:>10.2f}"
        )
        for variant, s in size["variants"].items():
            lines.append(
                f"{size['batch']:>6}  {LABELS[variant]:<21}"
                f" {s['service_cpu_ns_per_sample']:>9.1f} {s['cpu_ratio_to_in_process']:>7.2f}"
                f" {s['samples_per_s'] / 1e6:>10.2f}"
                f" {s['ack_ms']['p50']:>6.1f}ms {s['ack_ms']['p99']:>6.1f}ms"
                f" {s['batches_acked']:>7} {s['errors']:>3}  {'yes' if s['complete'] else 'NO'}"
            )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, nargs="+", default=[8192, 65536])
    ap.add_argument("--duration", type=float, default=6.0, help="seconds per variant")
    ap.add_argument("--repeat", type=int, default=1, help="runs of every variant and baseline")
    ap.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    ap.add_argument(
        "--baseline-seconds",
        type=float,
        default=2.0,
        help="the least time each of the baseline's 3 repeats is timed",
    )
    ap.add_argument("--serve", choices=FLOORS, help="run one floor server (the benchmark's)")
    ap.add_argument("--port", type=int, default=0, help="with --serve")
    ap.add_argument("--data-dir", type=Path, help="with --serve: the log's folder's parent")
    args = ap.parse_args()

    if args.serve:
        data = args.data_dir or Path(tempfile.mkdtemp(prefix="bench-floor-"))
        counts = asyncio.run(serve_floor(args.serve, args.port, data))
        print(json.dumps(counts), flush=True)
        return

    report: dict[str, Any] = {
        "producers": 1,
        "fsync": "batch",
        "duration_s": args.duration,
        "repeat": args.repeat,
        "cpus": os.cpu_count(),
        "sizes": [],
    }
    for n in args.batch:
        bases: list[dict[str, float]] = []
        runs: dict[str, list[dict[str, Any]]] = {v: [] for v in args.variants}
        for rep in range(args.repeat):
            base = bs.in_process_baseline(n, args.baseline_seconds)
            bases.append(base)
            bs.note(
                f"batch {n}, repeat {rep + 1}: in-process baseline"
                f" {base['cpu_s_per_sample'] * 1e9:.1f} ns CPU a sample,"
                f" {base['samples_per_s'] / 1e6:.2f}M samples/s"
            )
            order = args.variants if rep % 2 == 0 else args.variants[::-1]  # drift evens out
            for variant in order:
                r = measure(variant, n, args.duration, base)
                runs[variant].append(r)
                bs.note(
                    f"batch {n}, {LABELS[variant]}: {r['service_cpu_ns_per_sample']:.1f} ns CPU"
                    f" a sample (x{r['cpu_ratio_to_in_process']:.2f}),"
                    f" {r['samples_per_s'] / 1e6:.2f}M samples/s, {r['batches_acked']} acks,"
                    f" {r['errors']} errors{'' if r['complete'] else ', INCOMPLETE'}"
                )
        report["sizes"].append(
            {
                "batch": n,
                "baseline": {
                    "cpu_ns_per_sample": float(
                        np.median([b["cpu_s_per_sample"] * 1e9 for b in bases])
                    ),
                    "samples_per_s": float(np.median([b["samples_per_s"] for b in bases])),
                    "repeats": bases,
                },
                "variants": {v: summary(runs[v]) for v in args.variants},
            }
        )
    bs.note("\n" + table(report))
    print(json.dumps(report, indent=2))
    incomplete = [
        f"{size['batch']}/{v}"
        for size in report["sizes"]
        for v, s in size["variants"].items()
        if not s["complete"]
    ]
    if incomplete:
        bs.note(f"INCOMPLETE (missing acks, a count mismatch or error acks): {incomplete}")
        sys.exit(1)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
