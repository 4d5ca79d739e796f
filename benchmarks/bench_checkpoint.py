"""Checkpoint write time and recovery time of a large run (issue 17).

One eval run with the default eval metrics (exact AUC, grouped AUC by user, NE) is
filled in process through :meth:`MetricStore.ingest` (``--fsync none``: the log's
sync is not what is measured) with ``--samples`` samples in ``--batch``-sample
batches, then:

* the first checkpoint (every retained chunk written) is timed;
* ``--more`` samples more are ingested and a second checkpoint is timed (incremental:
  only the new chunks, plus the manifest);
* the store is closed, ``--tail`` samples more being left in the log, and reopening it
  is timed: loading the newest checkpoint and replaying the log after it.

The result is one JSON document on stdout; notes go to stderr. Sizes: 50M samples
hold about 2.5 GB of retained state and need about 8 GB of memory at the peak.

Example::

    python benchmarks/bench_checkpoint.py --samples 50000000
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))


def note(text: str) -> None:
    """A line for the reader, on stderr."""
    print(text, file=sys.stderr, flush=True)


def folder_bytes(path: Path) -> int:
    """Bytes of the files under ``path``."""
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--samples", type=int, default=5_000_000)
    ap.add_argument("--more", type=int, default=None, help="default: a tenth of --samples")
    ap.add_argument("--tail", type=int, default=None, help="default: a tenth of --samples")
    ap.add_argument("--batch", type=int, default=65536)
    ap.add_argument("--dir", default=None, help="data dir's parent (default: the temp dir)")
    args = ap.parse_args()
    more = args.more if args.more is not None else args.samples // 10
    tail = args.tail if args.tail is not None else args.samples // 10

    import torch
    from bench_service import make_messages

    from rankboard.protos import ingest_pb2
    from rankboard.service.state.store import MetricStore, RunKey, StoreConfig

    torch.set_num_threads(1)
    raws = [m.SerializeToString() for m in make_messages(8, args.batch, "p", seed=5)]
    seq = 0

    def fill(store: MetricStore, samples: int) -> float:
        nonlocal seq
        start = time.perf_counter()
        for _ in range(samples // args.batch):
            raw = raws[seq % len(raws)]
            seq += 1
            msg = ingest_pb2.Batch.FromString(raw)
            msg.sequence = seq
            store.ingest(msg, raw=msg.SerializeToString())
        return time.perf_counter() - start

    config = dict(
        fsync="none",
        checkpoint_interval_s=1e9,
        checkpoint_wal_bytes=1 << 50,
        max_samples_per_run=10**10,
        max_samples_total=10**11,
        snapshot_min_interval_s=0.0,
    )
    key = RunKey("bench", "control", "ctr", "eval")
    with tempfile.TemporaryDirectory(dir=args.dir) as data:
        store = MetricStore(StoreConfig(data_dir=data, **config))
        seconds = fill(store, args.samples)
        held = store.run(key).samples
        note(f"ingested {held} samples in {seconds:.1f} s")
        t = time.perf_counter()
        store.checkpoint()
        first = time.perf_counter() - t
        first_bytes = folder_bytes(Path(data) / "checkpoints")
        note(f"first checkpoint: {first:.2f} s, {first_bytes / 2**20:.0f} MiB on disk")
        fill(store, more)
        t = time.perf_counter()
        store.checkpoint()
        second = time.perf_counter() - t
        note(f"second checkpoint ({more} samples more): {second:.2f} s")
        fill(store, tail)
        total = store.run(key).samples
        auc = store.snapshot(key, fresh=True)[0].metrics["auc"]
        store.close()
        del store
        wal_bytes = folder_bytes(Path(data) / "wal")
        t = time.perf_counter()
        reopened = MetricStore(StoreConfig(data_dir=data, **config))
        recovery = time.perf_counter() - t
        assert reopened.run(key).samples == total
        auc_after = reopened.snapshot(key, fresh=True)[0].metrics["auc"]
        note(f"recovery ({tail} samples in the log after it): {recovery:.2f} s")
        reopened.close()
        status = Path("/proc/self/status").read_text()
        peak = int(re.search(r"VmHWM:\s+(\d+)", status).group(1)) / 1024
    print(
        json.dumps(
            {
                "samples": held,
                "batch": args.batch,
                "first_checkpoint_s": first,
                "checkpoint_mib": first_bytes / 2**20,
                "second_checkpoint_s": second,
                "second_checkpoint_new_samples": more,
                "samples_at_recovery": total,
                "log_mib_replayed": wal_bytes / 2**20,
                "recovery_s": recovery,
                "auc_equal_after_recovery": bool(np.isclose(auc, auc_after, rtol=0, atol=0)),
                "peak_rss_mib": peak,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
