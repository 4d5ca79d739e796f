"""Ingest cost as a run grows: batches/s into one eval step, per thousand batches.

The store is used in-process (no gRPC), so the figure is the apply path alone: decode,
checks against the run's state, undo point, metric updates, sample columns, log append.
The same run measures the baseline: torchmetrics' own ``Metric.__hash__`` (which visits
every retained chunk) put back on :class:`RankMetric`, as before the fix.

    .venv/bin/python benchmarks/bench_ingest_growth.py [--batches 3000] [--batch 1024]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

import numpy as np
from torchmetrics import Metric
from tqdm import tqdm

from rankboard.protos.wire import encode_batch
from rankboard.service.metrics.base import RankMetric
from rankboard.service.state.store import MetricStore, StoreConfig


def run(batches: int, n: int, label: str) -> list[float]:
    """Batches/s of each block of 1000 batches."""
    rng = np.random.default_rng(0)
    rates = []
    with tempfile.TemporaryDirectory() as d:
        store = MetricStore(StoreConfig(data_dir=d))
        t0 = time.perf_counter()
        for i in tqdm(range(1, batches + 1), desc=label, unit="batch", leave=False):
            p = rng.random(n).astype(np.float32)
            y = (rng.random(n) < 0.3).astype(np.float32)
            msg = encode_batch(
                producer_id="p",
                sequence=i,
                experiment="e",
                arm="a",
                task="ctr",
                phase="eval",
                step=1,
                predictions=p,
                labels=y,
                grouping_keys={"user": rng.integers(0, 1000, n)},
            )
            store.ingest(msg, wait=False)
            if i % 1000 == 0:
                rates.append(1000 / (time.perf_counter() - t0))
                t0 = time.perf_counter()
        store.close()
    return rates


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batches", type=int, default=3000)
    p.add_argument("--batch", type=int, default=1024)
    args = p.parse_args()
    identity = RankMetric.__hash__
    RankMetric.__hash__ = Metric.__hash__  # type: ignore[method-assign]
    try:
        before = run(args.batches, args.batch, "torchmetrics hash")
    finally:
        RankMetric.__hash__ = identity  # type: ignore[method-assign]
    after = run(args.batches, args.batch, "identity hash")
    print(
        json.dumps(
            {
                "batch_samples": args.batch,
                "batches_per_s_by_thousand": {"before": before, "after": after},
                "ratio_last_block": after[-1] / before[-1],
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
