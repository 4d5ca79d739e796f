"""Batches that carry several steps (``Batch.segments``) against the real service.

A segmented batch must be applied exactly as its segments sent one batch each:
one decayed-metric update per training step, one eval window per eval step,
the same history, and all-or-nothing acceptance with clear errors.
"""

from __future__ import annotations

import grpc
import httpx
import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from rankboard.protos import ingest_pb2, ingest_pb2_grpc, metric_pb2, parse_text
from tests.helpers import make_batch

DECL = "auc { thresholds: 200 } decay_rate: 0.5 decay_step: 2"


def data(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.3).astype(np.float32)
    p = np.clip(0.3 * y + 0.7 * rng.random(n), 0, 1).astype(np.float32)
    return p, y


def segmented(p, y, steps, sizes, **kw) -> ingest_pb2.Batch:
    msg = make_batch(preds=p, labels=y, **kw)
    for step, count in zip(steps, sizes, strict=True):
        msg.segments.add(step=step, samples=count)
    return msg


def train_view(http: httpx.Client, arm: str) -> tuple[dict, list]:
    body = http.get(
        f"/v1/experiments/exp/arms/{arm}/metrics",
        params={"task": "ctr", "phase": "train", "fresh": "true"},
    ).json()
    body = {k: body[k] for k in ("step", "samples", "metrics")}
    hist = http.get(
        f"/v1/experiments/exp/arms/{arm}/history",
        params={"task": "ctr", "phase": "train", "metric": "auc"},
    ).json()
    return body, hist["points"]


def test_segmented_train_batch_equals_one_batch_per_step(stub, http) -> None:
    decl = [parse_text(DECL, metric_pb2.TrainMetricConfig())]
    p, y = data(1200, seed=1)
    sizes = [200, 150, 250, 200, 100, 300]
    steps = [10, 20, 30, 40, 50, 60]
    bounds = np.cumsum([0, *sizes])
    # arm "single": one batch per step; arm "merged": two batches of three segments
    for i, step in enumerate(steps):
        lo, hi = bounds[i], bounds[i + 1]
        ack = stub.Send(
            make_batch(
                preds=p[lo:hi],
                labels=y[lo:hi],
                arm="single",
                step=step,
                phase=ingest_pb2.PHASE_TRAIN,
                seq=i + 1,
                train_metrics=decl if i == 0 else None,
            )
        )
        assert ack.error_code == 0, ack.error_message
    for j in range(2):
        lo, hi = bounds[3 * j], bounds[3 * j + 3]
        ack = stub.Send(
            segmented(
                p[lo:hi],
                y[lo:hi],
                steps[3 * j : 3 * j + 3],
                sizes[3 * j : 3 * j + 3],
                arm="merged",
                producer="p1",
                phase=ingest_pb2.PHASE_TRAIN,
                seq=j + 1,
                train_metrics=decl if j == 0 else None,
            )
        )
        assert ack.error_code == 0 and ack.samples == hi - lo, ack.error_message
    single, single_hist = train_view(http, "single")
    merged, merged_hist = train_view(http, "merged")
    assert merged["samples"] == single["samples"] == 1200
    assert merged["step"] == single["step"] == 60
    assert merged["metrics"] == single["metrics"]
    # a decay every second step: points at steps 20, 40, 60, in both arms alike
    assert [pt["step"] for pt in merged_hist] == [20, 40, 60]
    assert merged_hist == single_hist
    # the first decayed window holds the first two steps' samples alone
    first = slice(0, bounds[2])
    assert merged_hist[0]["value"] == pytest.approx(roc_auc_score(y[first], p[first]), abs=0.01)


def test_segmented_eval_batch_fills_one_window_per_step(stub, http) -> None:
    p, y = data(900, seed=2)
    ack = stub.Send(segmented(p, y, [100, 200, 200], [300, 400, 200], step=0))
    assert ack.error_code == 0, ack.error_message
    for step, sel in ((100, slice(0, 300)), (200, slice(300, 900))):
        body = http.get(
            "/v1/experiments/exp/arms/control/metrics",
            params={"task": "ctr", "phase": "eval", "step": step},
        ).json()
        assert body["samples"] == sel.stop - sel.start
        assert body["metrics"]["auc"] == pytest.approx(roc_auc_score(y[sel], p[sel]), abs=1e-12)


@pytest.mark.parametrize(
    ("n", "steps", "sizes", "message"),
    [
        (20, [1, 2], [10, 5], "segments hold 15 samples"),
        (20, [1, 2], [10, 0], "at least one sample"),
        (20, [1, -2], [10, 10], "step must be >= 0"),
        (1025, list(range(1025)), [1] * 1025, "1025 segments is over the limit of 1024"),
    ],
)
def test_bad_segments_are_rejected_and_change_nothing(stub, http, n, steps, sizes, message) -> None:
    p, y = data(n, seed=3)
    ack = stub.Send(segmented(p, y, steps, sizes, phase=ingest_pb2.PHASE_TRAIN))
    assert ack.error_code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert message in ack.error_message
    assert http.get("/v1/experiments").json()["experiments"] == []
    # the producer's sequence was not consumed: the same sequence, fixed, applies
    good = segmented(p[:15], y[:15], [1, 2], [10, 5], phase=ingest_pb2.PHASE_TRAIN)
    assert stub.Send(good).error_code == 0


def test_segments_survive_a_restart(service_factory, tmp_path) -> None:
    """The log keeps the batch's bytes: replay applies the segments as before."""
    decl = [parse_text(DECL, metric_pb2.TrainMetricConfig())]
    p, y = data(800, seed=4)
    svc = service_factory(tmp_path / "d")
    with grpc.insecure_channel(svc.grpc_target) as ch:
        ack = ingest_pb2_grpc.IngestStub(ch).Send(
            segmented(
                p, y, [1, 2, 3, 4], [200] * 4, phase=ingest_pb2.PHASE_TRAIN, train_metrics=decl
            )
        )
        assert ack.error_code == 0, ack.error_message
    with httpx.Client(base_url=svc.http_url) as http:
        before = train_view(http, "control")
    svc.stop()
    svc2 = service_factory(tmp_path / "d")
    with httpx.Client(base_url=svc2.http_url) as http:
        after = train_view(http, "control")
    assert after == before and [pt["step"] for pt in after[1]] == [2, 4]
