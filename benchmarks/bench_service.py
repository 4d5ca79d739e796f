"""Service ingestion and load benchmark, on loopback, against a `rankboard serve` process.

Producers are separate processes streaming pre-encoded 8k-sample batches with
grouping keys over ``Ingest/Stream`` (so the figure is the service's, not the
client's encoding); pollers are threads of one more process hitting the REST
snapshot of the run being filled. The baseline, measured in the same run, is
the in-process update of the same metrics (the metric classes alone, no gRPC,
no log): the ratio says what the service costs on top of the math.

Examples::

    # issue 4: one producer, default eval metrics, no pollers
    python benchmarks/bench_service.py --producers 1 --pollers 0 --duration 20
    # issue 6: load test, 4 producers and 20 pollers on a run of 10M samples
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
) -> None:
    """Stream batches for ``duration`` seconds (at most ``rate`` samples/s when set);
    report samples and ack latencies."""
    import grpc

    from rankboard.protos import ingest_pb2_grpc

    pool = make_messages(64, n, f"bench-{idx}", seed=idx, arm=arm)
    sent: dict[int, float] = {}
    latencies: list[float] = []
    errors = 0
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
    target: str, streams: int, duration: float, n: int, queue: mp.Queue, window: int = 2
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
    url: str, pollers: int, duration: float, queue: mp.Queue, interval: float = 0.0
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


def in_process_rate(n: int, batches: int = 200) -> float:
    """Samples/s of the default eval metrics' update, in process (the baseline)."""
    from rankboard.service.state.batch import decode_batch
    from rankboard.service.state.run import Run

    msgs = make_messages(batches, n, "base", seed=99)
    run = Run.create(decode_batch(msgs[0]), device=__import__("torch").device("cpu"))
    decoded = [decode_batch(m) for m in msgs]
    start = time.perf_counter()
    for b in decoded:
        run.apply(b)
    return batches * n / (time.perf_counter() - start)


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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--producers", type=int, default=1)
    ap.add_argument(
        "--streams",
        type=int,
        default=0,
        help="extra producer streams multiplexed in one grpc.aio process (many ranks)",
    )
    ap.add_argument("--pollers", type=int, default=0)
    ap.add_argument("--duration", type=float, default=20.0)
    ap.add_argument("--batch", type=int, default=8192)
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

    base = in_process_rate(args.batch)
    print(f"in-process update of the default eval metrics: {base / 1e6:.2f}M samples/s", flush=True)
    gport, hport = free_port(), free_port()
    with tempfile.TemporaryDirectory() as data:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "rankboard.service.cli",
                "serve",
                "--grpc-port",
                str(gport),
                "--http-port",
                str(hport),
                "--data-dir",
                data,
                "--device",
                "cpu",
                "--fsync",
                args.fsync,
                "--log-level",
                "WARNING",
                "--max-samples-per-run",
                str(10**9),
                "--max-samples-total",
                str(10**9),
            ],
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
                count = args.preload // args.batch
                print(
                    f"preloading {count * args.batch} samples (about "
                    f"{count * args.batch / 3e6:.0f} s) ...",
                    flush=True,
                )
                p = ctx.Process(
                    target=producer, args=(target, 999, 1e9, args.batch, q, "control", count)
                )
                p.start()
                q.get()
                p.join()
            procs = [
                ctx.Process(
                    target=producer,
                    args=(target, i, args.duration, args.batch, q, "control", None, args.rate),
                )
                for i in range(args.producers)
            ]
            if args.streams:
                procs.append(
                    ctx.Process(
                        target=streams_process,
                        args=(target, args.streams, args.duration, args.batch, q),
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
                        args=(url, args.pollers, args.duration, q, args.poll_interval),
                    )
                )
            for p in procs:
                p.start()
            results = wait_with_progress(q, len(procs), args.duration)
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
    report = {
        "producers": args.producers,
        "streams": args.streams,
        "pollers": args.pollers,
        "batch": args.batch,
        "fsync": args.fsync,
        "preload": args.preload,
        "rate_per_producer": args.rate,
        "poll_interval_s": args.poll_interval,
        "ingested_samples_per_s": samples / seconds,
        "in_process_samples_per_s": base,
        "ratio_service_to_in_process": samples / seconds / base,
        "ack_ms": {"p50": pct(acks, 50), "p99": pct(acks, 99)},
        "snapshot_ms": {"p50": pct(snaps, 50), "p99": pct(snaps, 99), "requests": len(snaps)},
        "errors": sum(r["errors"] for r in results),
        "service_peak_rss_mb": peak_kb / 1024,
        "exit_code": proc.returncode,
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
