"""Service ingestion and load benchmark, on loopback, against a `rankboard serve` process.

Producers are separate processes streaming pre-encoded batches with grouping keys over
``Ingest/Stream`` (so the figure is the service's, not the client's encoding); each
producer writes its own run (arm ``control``, ``arm1``, ...; ``--same-run`` puts them all
in ``control``); pollers are threads of one more process hitting the REST snapshot of
``control``. The baseline, measured in the same run, is the in-process update of the same
metrics (``Run.apply`` of decoded batches: the metric classes alone, no gRPC, no log, no
decoding), with torch on one thread, after a warm-up, timed for at least
``--baseline-seconds``, the median of 3 repeats.

The figure that matters is CPU seconds per sample: the service process's (user + system
time of every thread, read from ``/proc/<pid>/stat`` between the producers' start and
end) over the samples acknowledged, against the baseline's (``time.process_time`` over
the samples applied). Their ratio is what ingestion costs on top of the math; wall-clock
throughput on a shared 2-core machine says more about the neighbours.

Several ``--batch`` and ``--producers`` values run every combination, each against a
fresh service (the baseline is measured once per batch size). The only thing on stdout
is one JSON document (a list of reports when several combinations ran); progress and
notes go to stderr.

Examples::

    # issue 17: CPU per sample, 1, 2 and 8 producers, 8k and 64k batches
    python benchmarks/bench_service.py --producers 1 2 8 --batch 8192 65536 --duration 10
    # issue 4: one producer, default eval metrics, no pollers
    python benchmarks/bench_service.py --producers 1 --pollers 0 --duration 20
    # issue 6: load test, 2 producers and 20 pollers on a run of 10M samples
    python benchmarks/bench_service.py --producers 2 --pollers 20 --duration 30 --preload 10000000
    # the same with dashboards polling every 0.1 s each instead of back to back
    python benchmarks/bench_service.py --producers 2 --pollers 20 --duration 30 --preload 10000000 \
        --poll-interval 0.1
    # the same with ingestion held to 250k samples/s per producer
    python benchmarks/bench_service.py --producers 2 --pollers 20 --duration 30 --preload 10000000 \
        --rate 250000
    # issue 15: 512 producer streams (one grpc.aio process, 4 channels), 1024-sample batches
    python benchmarks/bench_service.py --producers 0 --streams 512 --batch 1024 --duration 20
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing as mp
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_messages(count: int, n: int, producer: str, seed: int, arm: str = "control") -> list:
    from rankboard.protos import ingest_pb2
    from rankboard.service.state.batch import encode_array

    rng = np.random.default_rng(seed)
    out = []
    for i in range(count):
        y = (rng.random(n) < 0.3).astype(np.float32)
        p = np.clip(0.3 * y + 0.7 * rng.random(n), 0, 1).astype(np.float32)
        g = rng.integers(0, n * 8, n).astype(np.int64)
        msg = ingest_pb2.Batch(
            producer_id=producer,
            sequence=i + 1,
            experiment="bench",
            arm=arm,
            task="ctr",
            phase=ingest_pb2.PHASE_EVAL,
            step=1,
            predictions=encode_array(p),
            labels=encode_array(y),
        )
        msg.grouping_keys.add(name="user_id", keys=encode_array(g))
        out.append(msg)
    return out


def producer(
    target: str,
    idx: int,
    duration: float,
    n: int,
    queue: mp.Queue,
    arm: str = "control",
    max_batches: int | None = None,
    rate: float | None = None,
    ready: Any = None,
) -> None:
    """Stream batches for ``duration`` seconds (at most ``rate`` samples/s when set);
    report samples and ack latencies. With ``ready`` (a barrier) the batches are built
    first and streaming starts when every party is ready."""
    import grpc

    from rankboard.protos import ingest_pb2_grpc

    pool = make_messages(max(4, min(64, (1 << 22) // n)), n, f"bench-{idx}", seed=idx, arm=arm)
    sent: dict[int, float] = {}
    latencies: list[float] = []
    errors = 0
    if ready is not None:
        ready.wait()
    deadline = time.perf_counter() + duration
    seq = 0

    def requests():
        nonlocal seq
        begin = time.perf_counter()
        while time.perf_counter() < deadline and (max_batches is None or seq < max_batches):
            if rate:
                ahead = begin + seq * n / rate - time.perf_counter()
                if ahead > 0:
                    time.sleep(ahead)
            msg = pool[seq % len(pool)]
            seq += 1
            msg.sequence = seq
            sent[seq] = time.perf_counter()
            yield msg

    start = time.perf_counter()
    samples = 0
    with grpc.insecure_channel(target, options=[("grpc.max_send_message_length", 64 << 20)]) as ch:
        for ack in ingest_pb2_grpc.IngestStub(ch).Stream(requests()):
            latencies.append(time.perf_counter() - sent.pop(ack.sequence))
            if ack.error_code:
                errors += 1
            samples += ack.samples
    queue.put(
        {
            "samples": samples,
            "seconds": time.perf_counter() - start,
            "latencies": latencies,
            "errors": errors,
        }
    )


def streams_process(
    target: str,
    streams: int,
    duration: float,
    n: int,
    queue: mp.Queue,
    window: int = 2,
    ready: Any = None,
) -> None:
    """``streams`` producers in one process, each its own ``Ingest/Stream`` with at most
    ``window`` batches in flight, over 4 grpc.aio channels; report samples and ack latencies.

    Messages are the pre-encoded batch bytes with the producer id and sequence fields
    appended (protobuf concatenation), so the client costs next to nothing per batch.
    """
    import asyncio

    import grpc

    from rankboard.protos import ingest_pb2

    bases = [m.SerializeToString() for m in make_messages(16, n, "", seed=7)]
    latencies: list[float] = []
    counts = {"samples": 0, "errors": 0}

    async def one(i: int, channel: grpc.aio.Channel, deadline: float) -> None:
        call = channel.stream_stream(
            "/rankboard.v1.Ingest/Stream",
            request_serializer=lambda b: b,
            response_deserializer=ingest_pb2.Ack.FromString,
        )()
        sent: dict[int, float] = {}
        room = asyncio.Semaphore(window)

        async def reader() -> None:
            async for ack in call:
                latencies.append(time.perf_counter() - sent.pop(ack.sequence))
                counts["samples"] += ack.samples
                counts["errors"] += bool(ack.error_code)
                room.release()

        task = asyncio.create_task(reader())
        seq = 0
        while time.perf_counter() < deadline:
            await room.acquire()
            seq += 1
            ids = ingest_pb2.Batch(producer_id=f"stream-{i}", sequence=seq).SerializeToString()
            sent[seq] = time.perf_counter()
            await call.write(bases[seq % len(bases)] + ids)
        await call.done_writing()
        await task

    async def main() -> float:
        channels = [
            grpc.aio.insecure_channel(target, options=[("grpc.max_send_message_length", 64 << 20)])
            for _ in range(4)
        ]
        start = time.perf_counter()
        deadline = start + duration
        await asyncio.gather(*(one(i, channels[i % 4], deadline) for i in range(streams)))
        seconds = time.perf_counter() - start
        for ch in channels:
            await ch.close()
        return seconds

    if ready is not None:
        ready.wait()
    seconds = asyncio.run(main())
    queue.put(
        {
            "samples": counts["samples"],
            "seconds": seconds,
            "latencies": latencies,
            "errors": counts["errors"],
        }
    )


def poller_process(
    url: str,
    pollers: int,
    duration: float,
    queue: mp.Queue,
    interval: float = 0.0,
    ready: Any = None,
) -> None:
    """``pollers`` dashboard clients, each a thread with a keep-alive connection,
    polling every ``interval`` seconds (0: back to back).

    ``http.client`` rather than httpx: on 2 shared cores the client's own CPU time
    would otherwise be part of the latency measured.
    """
    import http.client
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    path = f"{parts.path}?{parts.query}"
    lat: list[float] = []
    errors = [0]
    if ready is not None:
        ready.wait()
    deadline = time.perf_counter() + duration

    def poll() -> None:
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
        # until the producers' first batch creates the run its snapshot is a 404: wait
        # for it (not timed, not an error)
        while time.perf_counter() < deadline:
            conn.request("GET", path)
            r = conn.getresponse()
            r.read()
            if r.status == 200:
                break
            time.sleep(0.01)
        while time.perf_counter() < deadline:
            t = time.perf_counter()
            if interval and lat:
                time.sleep(interval)
                t = time.perf_counter()
            conn.request("GET", path)
            r = conn.getresponse()
            r.read()
            lat.append(time.perf_counter() - t)
            if r.status != 200:
                errors[0] += 1
        conn.close()

    threads = [threading.Thread(target=poll) for _ in range(pollers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    queue.put({"latencies": lat, "errors": errors[0]})


def in_process_baseline(
    n: int, min_seconds: float = 2.0, repeats: int = 3, warmup: int = 20
) -> dict[str, float]:
    """The default eval metrics' in-process update (the baseline): samples/s and CPU
    seconds per sample, the median of ``repeats`` timings of at least ``min_seconds`` each,
    after ``warmup`` batches, torch on one thread.

    Each repeat applies the same pre-decoded batches to a fresh run (a run grows with
    what it retains, as the service's does over the timed part).
    """
    import torch

    from rankboard.service.state.batch import decode_batch
    from rankboard.service.state.run import Run

    torch.set_num_threads(1)
    pool = [decode_batch(m) for m in make_messages(16, n, "base", seed=99)]
    rates, cpus = [], []
    for _ in range(repeats):
        run = Run.create(pool[0], device=torch.device("cpu"))
        for i in range(warmup):
            run.apply(pool[i % len(pool)])
        done = 0
        wall, cpu = time.perf_counter(), time.process_time()
        while True:
            for _ in range(8):
                run.apply(pool[done % len(pool)])
                done += 1
            elapsed = time.perf_counter() - wall
            if elapsed >= min_seconds:
                break
        rates.append(done * n / elapsed)
        cpus.append((time.process_time() - cpu) / (done * n))
        del run
    return {
        "samples_per_s": float(np.median(rates)),
        "cpu_s_per_sample": float(np.median(cpus)),
        "samples_per_s_repeats": rates,
    }


_CLK_TCK = os.sysconf("SC_CLK_TCK")


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of every thread of ``pid`` so far (``/proc/<pid>/stat``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK  # utime, stime (fields 14, 15)


def wait_with_progress(q: mp.Queue, count: int, duration: float) -> list[dict]:
    """The ``count`` reports of the timed part, with a progress bar over its duration."""
    import queue

    from tqdm import tqdm

    results: list[dict] = []
    start = time.monotonic()
    with tqdm(total=round(duration), desc="load", unit="s", leave=False) as bar:
        while len(results) < count:
            with contextlib.suppress(queue.Empty):
                results.append(q.get(timeout=0.5))
            bar.n = min(round(time.monotonic() - start), bar.total)
            bar.refresh()
    return results


def pct(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q) * 1e3) if values else None  # JSON null, not NaN


def note(text: str) -> None:
    """A line for the reader, on stderr (stdout carries the JSON report only)."""
    print(text, file=sys.stderr, flush=True)


def serve_command(grpc_port: int, http_port: int, data_dir: str, fsync: str) -> list[str]:
    """The ``rankboard serve`` command line every service benchmark measures (caps far
    above what a run ingests)."""
    return [
        sys.executable,
        "-m",
        "rankboard.service.cli",
        "serve",
        "--grpc-port",
        str(grpc_port),
        "--http-port",
        str(http_port),
        "--data-dir",
        data_dir,
        "--device",
        "cpu",
        "--fsync",
        fsync,
        "--log-level",
        "WARNING",
        "--max-samples-per-run",
        str(10**9),
        "--max-samples-total",
        str(10**10),
    ]


def measure(args: argparse.Namespace, n: int, producers: int, base: dict[str, float]) -> dict:
    """One combination against a fresh ``rankboard serve``: its report."""
    gport, hport = free_port(), free_port()
    with tempfile.TemporaryDirectory() as data:
        proc = subprocess.Popen(
            serve_command(gport, hport, data, args.fsync),
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            line = proc.stdout.readline()
            if "gRPC on" not in line:
                raise SystemExit(f"service did not start: {line!r}")
            target = f"127.0.0.1:{gport}"
            ctx = mp.get_context("spawn")
            q: mp.Queue = ctx.Queue()
            if args.preload:
                count = args.preload // n
                note(f"preloading {count * n} samples (about {count * n / 3e6:.0f} s) ...")
                p = ctx.Process(target=producer, args=(target, 999, 1e9, n, q, "control", count))
                p.start()
                q.get()
                p.join()
            parties = producers + bool(args.streams) + bool(args.pollers) + 1
            ready = ctx.Barrier(parties)
            procs = [
                ctx.Process(
                    target=producer,
                    args=(
                        target,
                        i,
                        args.duration,
                        n,
                        q,
                        "control" if args.same_run or i == 0 else f"arm{i}",
                        None,
                        args.rate,
                        ready,
                    ),
                )
                for i in range(producers)
            ]
            if args.streams:
                procs.append(
                    ctx.Process(
                        target=streams_process,
                        args=(target, args.streams, args.duration, n, q, 2, ready),
                    )
                )
            url = (
                f"http://127.0.0.1:{hport}/v1/experiments/bench/arms/control/metrics"
                "?task=ctr&phase=eval"
            )
            if args.pollers:
                procs.append(
                    ctx.Process(
                        target=poller_process,
                        args=(url, args.pollers, args.duration, q, args.poll_interval, ready),
                    )
                )
            for p in procs:
                p.start()
            ready.wait()  # every producer built its batches: the timed part starts
            cpu0, wall0 = process_cpu_seconds(proc.pid), time.perf_counter()
            results = wait_with_progress(q, len(procs), args.duration)
            cpu = process_cpu_seconds(proc.pid) - cpu0
            wall = time.perf_counter() - wall0
            for p in procs:
                p.join()
            status = Path(f"/proc/{proc.pid}/status").read_text()
            peak_kb = int(re.search(r"VmHWM:\s+(\d+)", status).group(1))
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=60)
    prod = [r for r in results if "samples" in r]
    polls = [r for r in results if "samples" not in r]
    samples = sum(r["samples"] for r in prod)
    seconds = max(r["seconds"] for r in prod)
    acks = [x for r in prod for x in r["latencies"]]
    snaps = [x for r in polls for x in r["latencies"]]
    cpu_per_sample = cpu / samples if samples else None
    return {
        "producers": producers,
        "same_run": args.same_run,
        "streams": args.streams,
        "pollers": args.pollers,
        "batch": n,
        "fsync": args.fsync,
        "preload": args.preload,
        "rate_per_producer": args.rate,
        "poll_interval_s": args.poll_interval,
        "ingested_samples_per_s": samples / seconds,
        "in_process_samples_per_s": base["samples_per_s"],
        "ratio_service_to_in_process": samples / seconds / base["samples_per_s"],
        "service_cpu_s": cpu,
        "service_wall_s": wall,
        "service_cpu_us_per_sample": cpu_per_sample * 1e6 if cpu_per_sample else None,
        "in_process_cpu_us_per_sample": base["cpu_s_per_sample"] * 1e6,
        "cpu_ratio_service_to_in_process": (
            cpu_per_sample / base["cpu_s_per_sample"] if cpu_per_sample else None
        ),
        "ack_ms": {"p50": pct(acks, 50), "p99": pct(acks, 99)},
        "snapshot_ms": {"p50": pct(snaps, 50), "p99": pct(snaps, 99), "requests": len(snaps)},
        "errors": sum(r["errors"] for r in results),
        "service_peak_rss_mb": peak_kb / 1024,
        "exit_code": proc.returncode,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument(
        "--producers", type=int, nargs="+", default=[1], help="one or more producer counts"
    )
    ap.add_argument(
        "--same-run",
        action="store_true",
        help="every producer writes the same run (default: a run each, arms control, arm1, ...)",
    )
    ap.add_argument(
        "--streams",
        type=int,
        default=0,
        help="extra producer streams multiplexed in one grpc.aio process (many ranks)",
    )
    ap.add_argument("--pollers", type=int, default=0)
    ap.add_argument("--duration", type=float, default=20.0)
    ap.add_argument("--batch", type=int, nargs="+", default=[8192], help="one or more sizes")
    ap.add_argument(
        "--baseline-seconds",
        type=float,
        default=2.0,
        help="the least time each of the baseline's 3 repeats is timed",
    )
    ap.add_argument(
        "--preload",
        type=int,
        default=0,
        help="samples streamed into the polled run before the timed part",
    )
    ap.add_argument("--fsync", default="batch", choices=["batch", "interval", "none"])
    ap.add_argument(
        "--poll-interval",
        type=float,
        default=0.0,
        help="seconds between a poller's requests (default 0: back to back)",
    )
    ap.add_argument(
        "--rate",
        type=float,
        default=None,
        help="samples/s per producer (default: as fast as the service takes)",
    )
    args = ap.parse_args()

    reports = []
    for n in args.batch:
        base = in_process_baseline(n, args.baseline_seconds)
        note(
            f"batch {n}: in-process update of the default eval metrics"
            f" {base['samples_per_s'] / 1e6:.2f}M samples/s,"
            f" {base['cpu_s_per_sample'] * 1e9:.1f} ns CPU a sample (median of 3)"
        )
        for producers in args.producers:
            report = measure(args, n, producers, base)
            note(
                f"batch {n}, {producers} producers: {report['ingested_samples_per_s'] / 1e6:.2f}M"
                f" samples/s, CPU per sample x{report['cpu_ratio_service_to_in_process'] or 0:.2f}"
                " of the in-process update"
            )
            reports.append(report)
    print(json.dumps(reports[0] if len(reports) == 1 else reports, indent=2))


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
