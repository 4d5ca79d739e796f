"""MetricsStream during a service outage: spill to a local file, go on, lose nothing.

A real service is stopped under the stream; ``log()`` keeps returning (nothing
blocks the training loop), the oldest unacknowledged batches go to the spill file,
and when the service is back on the same address every sample counts exactly once.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from rankboard.service.server import ServiceConfig, run_service
from rankboard.trainer.client import MetricsStream
from tests.helpers import fetch_metrics as metrics
from tests.helpers import free_port


def test_outage_spills_then_everything_arrives_once(tmp_path: Path, caplog) -> None:
    rng = np.random.default_rng(8)
    spill_dir = tmp_path / "spill"
    spill_dir.mkdir()
    cfg = ServiceConfig(
        data_dir=tmp_path / "data", device="cpu", grpc_port=free_port(), http_port=free_port()
    )
    preds, labels = [], []

    def batch() -> tuple[np.ndarray, np.ndarray]:
        p = rng.random(500).astype(np.float32)
        y = (rng.random(500) < 0.3 + 0.4 * p).astype(np.float32)
        preds.append(p)
        labels.append(y)
        return p, y

    with run_service(cfg) as svc:
        stream = MetricsStream(
            svc.grpc_target,
            experiment="exp",
            arm="s",
            producer_id="spiller",
            max_pending_samples=2000,
            spill_dir=spill_dir,
            backoff_initial=0.05,
            backoff_max=0.3,
            ack_timeout=5.0,
        )
        for _ in range(4):
            stream.log(*batch(), task="ctr", phase="eval", step=1)
        stream.flush(timeout=30)
    # the service is away: 30 records of 500 against a memory bound of 2000
    done = threading.Event()

    def train() -> None:
        for _ in range(30):
            stream.log(*batch(), task="ctr", phase="eval", step=1)
        done.set()

    with caplog.at_level(logging.WARNING, logger="rankboard.trainer.client"):
        worker = threading.Thread(target=train)
        worker.start()
        assert done.wait(60), "log() blocked during the outage"
        worker.join()
        during = stream.stats
        assert during.spilled_samples >= 15_000 - 2000
        assert during.pending_samples == 15_000  # nothing dropped, nothing applied
        assert during.dropped_samples == 0
        spill_files = list(spill_dir.iterdir())
        assert len(spill_files) == 1 and spill_files[0].stat().st_size > 0
        assert any("spilling to disk" in r.getMessage() for r in caplog.records)
        with run_service(cfg) as svc:  # back, same address and data
            stream.flush(timeout=60)
            stats = stream.stats
            stream.close()
            got = metrics(svc.http_url, "s")
    p, y = np.concatenate(preds), np.concatenate(labels)
    assert got["samples"] == 17_000  # every sample, once
    assert got["metrics"]["auc"] == pytest.approx(roc_auc_score(y, p), abs=1e-9)
    assert stats.rejected_batches == 0 and stats.applied_samples == 17_000
    assert list(spill_dir.iterdir()) == []  # the spill file is gone once drained
    assert any("went through" in r.getMessage() for r in caplog.records)


def test_unknown_policy_is_refused() -> None:
    with pytest.raises(ValueError, match="'spill', 'block' or 'drop'"):
        MetricsStream("127.0.0.1:1", experiment="e", arm="a", producer_id="p", when_full="wait")
