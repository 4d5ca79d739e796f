"""MetricsStream against the real rankboard service on loopback ports.

* two producers (rank 0 and rank 1 of one run) each send half of the samples:
  the service's AUC and grouped AUC equal sklearn's on the whole data, with
  grouped AUC computed here group by group;
* the service is stopped and restarted (same data dir and ports) under a
  stream that keeps logging: nothing is lost and nothing counts twice.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from rankboard.service.server import ServiceConfig, run_service
from rankboard.trainer.client import MetricsStream
from tests.helpers import fetch_metrics as metrics
from tests.helpers import free_port, sklearn_gauc

EVAL_METRICS = 'metrics { auc { thresholds: 0 } } metrics { grouped_auc { grouping_key: "user" } }'


def test_two_ranks_grouped_auc_equals_whole_data(tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    n, n_users = 20_000, 300
    users = rng.integers(0, n_users, n)
    user_bias = rng.normal(size=n_users)
    labels = (rng.random(n) < 1 / (1 + np.exp(-user_bias[users]))).astype(np.float32)
    # quantized predictions: ties within and across ranks
    preds = np.round(np.clip(0.5 + 0.2 * (labels - 0.5) + rng.normal(0, 0.25, n), 0, 1), 2)
    preds = preds.astype(np.float32)
    rank_of = rng.integers(0, 2, n)  # every user's samples are split over both ranks
    with run_service(ServiceConfig(data_dir=tmp_path / "data", device="cpu")) as svc:
        streams = [
            MetricsStream(
                svc.grpc_target,
                experiment="exp",
                arm="a",
                run_id="job1",
                rank=r,
                metrics={("ctr", "eval"): EVAL_METRICS},
                max_batch_samples=3000,
            )
            for r in (0, 1)
        ]
        assert [s.producer_id for s in streams] == ["job1/rank0", "job1/rank1"]
        for r, s in enumerate(streams):
            idx = np.flatnonzero(rank_of == r)
            for chunk in np.array_split(idx, 4):  # several log calls per rank
                s.log(
                    preds[chunk],
                    labels[chunk],
                    task="ctr",
                    phase="eval",
                    step=100,
                    grouping_keys={"user": users[chunk]},
                )
        for s in streams:
            s.close()
            assert s.stats.rejected_batches == 0
        got = metrics(svc.http_url, "a")
    assert got["samples"] == n and got["step"] == 100
    assert got["metrics"]["auc"] == pytest.approx(roc_auc_score(labels, preds), abs=1e-9)
    assert got["metrics"]["grouped_auc"] == pytest.approx(
        sklearn_gauc(preds, labels, users), abs=1e-9
    )


def test_service_restart_under_the_stream(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    cfg = ServiceConfig(
        data_dir=tmp_path / "data",
        device="cpu",
        grpc_port=free_port(),
        http_port=free_port(),
    )
    all_preds, all_labels = [], []
    stream = None
    with run_service(cfg) as svc:
        stream = MetricsStream(
            svc.grpc_target,
            experiment="exp",
            arm="r",
            run_id="job2",
            rank=0,
            metrics={("ctr", "eval"): EVAL_METRICS},
            backoff_initial=0.05,
            backoff_max=0.5,
            ack_timeout=5.0,
        )
        for _ in range(10):
            p, y = rng.random(500).astype(np.float32), rng.integers(0, 2, 500).astype(np.float32)
            all_preds.append(p)
            all_labels.append(y)
            stream.log(
                p, y, task="ctr", phase="eval", step=7, grouping_keys={"user": np.arange(500)}
            )
    # the service is down: training goes on logging
    for _ in range(10):
        p, y = rng.random(500).astype(np.float32), rng.integers(0, 2, 500).astype(np.float32)
        all_preds.append(p)
        all_labels.append(y)
        stream.log(p, y, task="ctr", phase="eval", step=7, grouping_keys={"user": np.arange(500)})
    assert stream.stats.pending_samples > 0
    with run_service(cfg) as svc:  # same ports, same data dir
        stream.flush(timeout=60)
        stats = stream.stats
        stream.close()
        got = metrics(svc.http_url, "r")
    preds, labels = np.concatenate(all_preds), np.concatenate(all_labels)
    assert got["samples"] == 10_000  # nothing lost, nothing twice
    assert got["metrics"]["auc"] == pytest.approx(roc_auc_score(labels, preds), abs=1e-9)
    assert stats.rejected_batches == 0
    assert stats.logged_samples == 10_000
