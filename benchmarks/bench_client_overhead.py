"""Per-step cost of streaming an 8k-sample batch with MetricsStream, against a DLRM step.

The demo's DLRM (torchrec EmbeddingBagCollection sharded with
DistributedModelParallel on a gloo world of one, fused row-wise Adagrad, Adam)
trains on batches of 8192 rows on the CPU. Blocks of steps without logging and
with one ``MetricsStream.log`` of the step's 8192 predictions / labels / user
ids alternate (so that drift hits both alike) against a live ``rankboard
serve`` subprocess; the script prints:

* the time ``log()`` takes on the training thread (median), over the median
  step time without logging: the overhead the training loop sees directly;
* the median step time with logging over the median without: that also counts
  the client's background thread (batching, encoding, gRPC) competing for the
  same cores. With ``--train-cores N`` every thread of the training process is
  pinned to the first N cores (N torch threads) and every thread of the service
  to the others, as if it ran on another machine; without it the service's own
  work competes with training too;
* CPU time per step (all threads, from the kernel's accounting) of the training
  process without and with logging, and of the service: the client's own cost
  whatever the cores are shared with.

Run::

    .venv/bin/python benchmarks/bench_client_overhead.py [--steps 40 --blocks 6] [--train-cores 1]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch


def pin_process(pid: int, cores: set[int]) -> None:
    """Pin every thread of ``pid`` (not only its main thread) to ``cores``."""
    for tid in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(ProcessLookupError, PermissionError):  # a thread that ended
            os.sched_setaffinity(int(tid), cores)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of all threads of ``pid`` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batch", type=int, default=8192)
    p.add_argument("--steps", type=int, default=40, help="steps per block")
    p.add_argument("--blocks", type=int, default=6, help="blocks of each kind, alternating")
    p.add_argument(
        "--train-cores",
        type=int,
        default=0,
        help="pin training (torch threads = this) to the first N cores and the service to the "
        "others, as if the service ran elsewhere (default 0: no pinning, torch's threads)",
    )
    p.add_argument(
        "--linger",
        type=float,
        default=None,
        help="MetricsStream linger in seconds (default: the client's default)",
    )
    args = p.parse_args()
    if args.train_cores:
        torch.set_num_threads(args.train_cores)
        pin_process(os.getpid(), set(range(args.train_cores)))

    from rankboard.protos import train_pb2
    from rankboard.protos.text import parse_file
    from rankboard.trainer.client import MetricsStream
    from rankboard.trainer.demo.data import make_click_data
    from rankboard.trainer.demo.model import model_inputs
    from rankboard.trainer.demo.run import _quiet_libraries, serve_subprocess
    from rankboard.trainer.demo.train import (
        CONFIG_DIR,
        DemoSettings,
        build_model,
        ensure_process_group,
    )

    _quiet_libraries()
    ensure_process_group()
    settings = DemoSettings()
    cfg = parse_file(CONFIG_DIR / "control.config", train_pb2.TrainConfig())
    model, opts = build_model(cfg, settings)
    data = make_click_data(args.batch * 8, settings.num_users, settings.num_items)
    batches = data.batches(args.batch)
    loss_fn = torch.nn.BCEWithLogitsLoss()

    def step(i: int, stream: MetricsStream | None, log_times: list[float]) -> None:
        b = batches[i % len(batches)]
        opts.zero_grad()
        logit, _ = model(*model_inputs(b))
        opts.backward(loss_fn(logit, b.click))
        opts.step()
        if stream is not None:
            t0 = time.perf_counter()
            stream.log(
                torch.sigmoid(logit),
                b.click,
                task="ctr",
                phase="train",
                step=i,
                grouping_keys={"user": b.user},
            )
            log_times.append(time.perf_counter() - t0)

    tmp = tempfile.TemporaryDirectory()
    with tmp, serve_subprocess(Path(tmp.name) / "data", extra_args=["--device", "cpu"]) as svc:
        if args.train_cores:
            pin_process(svc.process.pid, set(range(args.train_cores, os.cpu_count())))
            pin_process(os.getpid(), set(range(args.train_cores)))  # threads started since
        extra = {} if args.linger is None else {"linger": args.linger}
        stream = MetricsStream(
            svc.grpc_target, experiment="bench", arm="a", run_id="bench", **extra
        )
        for i in range(10):  # warm-up
            step(i, stream, [])
        stream.flush()
        plain: list[float] = []
        logged: list[float] = []
        log_times: list[float] = []
        cpu = {"plain": [0.0, 0.0], "logged": [0.0, 0.0]}  # [trainer, service] seconds
        i = 0
        for _ in range(args.blocks):
            for kind in ("plain", "logged"):
                c0, s0 = cpu_seconds(os.getpid()), cpu_seconds(svc.process.pid)
                for _ in range(args.steps):
                    t0 = time.perf_counter()
                    step(i, stream if kind == "logged" else None, log_times)
                    (plain if kind == "plain" else logged).append(time.perf_counter() - t0)
                    i += 1
                stream.flush()  # each logged block's acks arrive before the next block
                cpu[kind][0] += cpu_seconds(os.getpid()) - c0
                cpu[kind][1] += cpu_seconds(svc.process.pid) - s0
        stats = stream.stats
        stream.close()
    base = statistics.median(plain)
    with_log = statistics.median(logged)
    log_call = statistics.median(log_times)
    print(f"MetricsStream linger {stream.linger:g} s")
    print(
        f"DLRM step, batch {args.batch}, CPU ({torch.get_num_threads()} threads): "
        f"median {base * 1e3:.2f} ms without logging, {with_log * 1e3:.2f} ms with"
    )
    print(
        f"log() on the training thread: median {log_call * 1e6:.0f} us "
        f"= {100 * log_call / base:.2f}% of a step (target < 5%)"
    )
    print(
        f"step time with logging / without: {with_log / base:.4f} "
        f"(+{100 * (with_log / base - 1):.2f}%, includes the sender thread)"
    )
    per_step = args.blocks * args.steps
    tr_plain, tr_logged = cpu["plain"][0] / per_step, cpu["logged"][0] / per_step
    svc_logged = cpu["logged"][1] / per_step
    print(
        f"CPU per step, training process: {tr_plain * 1e3:.2f} ms without logging, "
        f"{tr_logged * 1e3:.2f} ms with: the client costs {(tr_logged - tr_plain) * 1e3:.2f} ms "
        f"= {100 * (tr_logged - tr_plain) / tr_plain:.2f}% of a step's CPU (target < 5%)"
    )
    print(f"CPU per logged step, service process: {svc_logged * 1e3:.2f} ms")
    print(
        f"sent {stats.acked_batches} batches, {stats.applied_samples} samples applied, "
        f"{stats.dropped_records} dropped, {stats.rejected_batches} rejected"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
