"""The service end to end: real gRPC and REST servers on loopback ports.

Reference values are computed independently with sklearn / numpy in the tests.
"""

from __future__ import annotations

import math

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from sklearn.metrics import mean_absolute_error, mean_squared_error, roc_auc_score

from rankboard.protos import ingest_pb2, ingest_pb2_grpc, metric_pb2, parse_text
from rankboard.service.grpc_api import SERVICE_NAME
from rankboard.service.rest import models
from tests.service.conftest import make_batch


def ref_ne(p: np.ndarray, y: np.ndarray, eta: float = 1e-12) -> float:
    p = np.clip(p.astype(np.float64), eta, 1 - eta)
    ce = -np.mean(y * np.log(p) + (1 - y) * np.log(1 - p))
    r = min(max(y.mean(), eta), 1 - eta)
    return ce / (-(r * math.log(r) + (1 - r) * math.log(1 - r)))


def ref_gauc(p: np.ndarray, y: np.ndarray, g: np.ndarray) -> float:
    vals = []
    for key in np.unique(g):
        m = g == key
        if 0 < y[m].sum() < m.sum():
            vals.append(roc_auc_score(y[m], p[m]))
    return float(np.mean(vals))


def click_data(n: int, seed: int, users: int = 50) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.3).astype(np.float32)
    # rounded predictions make ties
    p = np.clip(np.round(0.3 * y + rng.random(n) * 0.7, 2), 0, 1).astype(np.float32)
    g = rng.integers(0, users, n).astype(np.int64)
    return p, y, g


def get_metrics(http, arm="control", **params):
    params = {"task": "ctr", "phase": "eval", "fresh": "true", **params}
    r = http.get(f"/v1/experiments/exp/arms/{arm}/metrics", params=params)
    assert r.status_code == 200, r.text
    # the route writes its JSON itself: it must still be exactly the declared model
    assert models.MetricsSnapshot.model_validate_json(r.content).model_dump() == r.json()
    return r.json()


def test_eval_defaults_equal_independent_reference(stub, http) -> None:
    p, y, g = click_data(3000, seed=1)
    for i, sl in enumerate(np.array_split(np.arange(3000), 3)):
        ack = stub.Send(make_batch(preds=p[sl], labels=y[sl], keys={"user_id": g[sl]}, seq=i + 1))
        assert ack.error_code == 0, ack.error_message
        assert ack.samples == len(sl)
    body = get_metrics(http)
    assert body["samples"] == 3000
    assert body["step"] == 1
    assert set(body["metrics"]) == {"auc", "normalized_entropy", "grouped_auc"}
    assert body["metrics"]["auc"] == pytest.approx(roc_auc_score(y, p), abs=1e-9)
    assert body["metrics"]["normalized_entropy"] == pytest.approx(ref_ne(p, y), rel=1e-6)
    assert body["metrics"]["grouped_auc"] == pytest.approx(ref_gauc(p, y, g), abs=1e-9)
    assert body["stale"] is False


def test_regression_defaults(stub, http) -> None:
    rng = np.random.default_rng(3)
    t = rng.exponential(30, 500).round(0).astype(np.float32)
    p = (t + rng.normal(0, 20, 500)).round(0).astype(np.float32)
    ack = stub.Send(make_batch(preds=p, labels=t, task="watch_time"))
    assert ack.error_code == 0, ack.error_message
    body = get_metrics(http, task="watch_time")
    i, j = np.triu_indices(500, k=1)
    xauc = np.mean((t[i] - t[j]) * (p[i] - p[j]) > 0)
    assert body["metrics"]["xauc"] == pytest.approx(xauc, abs=1e-12)
    assert body["metrics"]["mean_squared_error"] == pytest.approx(mean_squared_error(t, p))
    assert body["metrics"]["mean_absolute_error"] == pytest.approx(mean_absolute_error(t, p))


def test_declared_metrics_and_eval_steps(stub, http) -> None:
    decl = [
        parse_text("auc { thresholds: 0 }", metric_pb2.MetricConfig()),
        parse_text("auc { thresholds: 50 }", metric_pb2.MetricConfig()),
        parse_text('grouped_auc { grouping_key: "uid" }', metric_pb2.MetricConfig()),
    ]
    p1, y1, g1 = click_data(400, seed=5)
    p2, y2, g2 = click_data(400, seed=6)
    assert stub.Send(make_batch(preds=p1, labels=y1, keys={"uid": g1}, metrics=decl,
                                step=100, seq=1)).error_code == 0
    assert stub.Send(make_batch(preds=p2, labels=y2, keys={"uid": g2}, step=200,
                                seq=2)).error_code == 0
    latest = get_metrics(http)
    assert latest["step"] == 200 and latest["samples"] == 400
    assert set(latest["metrics"]) == {"auc", "auc_2", "grouped_auc"}
    assert latest["metrics"]["auc"] == pytest.approx(roc_auc_score(y2, p2), abs=1e-9)
    first = get_metrics(http, step=100)
    assert first["metrics"]["auc"] == pytest.approx(roc_auc_score(y1, p1), abs=1e-9)
    assert first["metrics"]["grouped_auc"] == pytest.approx(ref_gauc(p1, y1, g1), abs=1e-9)
    hist = http.get("/v1/experiments/exp/arms/control/history",
                    params={"task": "ctr", "phase": "eval", "metric": "auc"}).json()
    assert [pt["step"] for pt in hist["points"]] == [100, 200]
    assert hist["points"][0]["value"] == pytest.approx(roc_auc_score(y1, p1), abs=1e-9)


def test_compare_two_arms(stub, http) -> None:
    p, y, _ = click_data(1000, seed=7)
    noisy = np.clip(p + np.random.default_rng(8).normal(0, 0.3, 1000), 0, 1).astype(np.float32)
    assert stub.Send(make_batch(preds=p, labels=y, arm="control", seq=1)).error_code == 0
    assert stub.Send(make_batch(preds=noisy, labels=y, arm="treatment", seq=2)).error_code == 0
    r = http.get("/v1/experiments/exp/compare",
                 params={"task": "ctr", "baseline": "control", "fresh": "true"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert models.Comparison.model_validate_json(r.content).model_dump() == body
    a_control, a_treat = roc_auc_score(y, p), roc_auc_score(y, noisy)
    assert body["arms"]["control"]["delta"]["auc"] == 0
    assert body["arms"]["treatment"]["metrics"]["auc"] == pytest.approx(a_treat, abs=1e-9)
    assert body["arms"]["treatment"]["delta"]["auc"] == pytest.approx(a_treat - a_control,
                                                                      abs=1e-9)
    exps = http.get("/v1/experiments").json()["experiments"]
    assert exps == [{"name": "exp", "arms": ["control", "treatment"], "tasks": ["ctr"],
                     "phases": ["eval"], "samples": 2000}]
    detail = http.get("/v1/experiments/exp").json()
    assert {r["arm"] for r in detail["runs"]} == {"control", "treatment"}


def test_stream_acks_in_order_and_retries_are_not_double_counted(stub, http) -> None:
    p, y, _ = click_data(800, seed=9)
    parts = np.array_split(np.arange(800), 4)
    batches = [make_batch(preds=p[s], labels=y[s], seq=i + 1) for i, s in enumerate(parts)]
    acks = list(stub.Stream(iter(batches)))
    assert [a.sequence for a in acks] == [1, 2, 3, 4]
    assert not any(a.duplicate for a in acks)
    # a reconnecting producer re-sends everything: all duplicates, nothing applied
    again = list(stub.Stream(iter(batches + batches[:1])))
    assert all(a.duplicate and a.error_code == 0 and a.samples == 0 for a in again)
    body = get_metrics(http)
    assert body["samples"] == 800
    assert body["metrics"]["auc"] == pytest.approx(roc_auc_score(y, p), abs=1e-9)


def test_train_phase_decayed_auc_and_history(stub, http) -> None:
    decl = [parse_text("auc { thresholds: 200 } decay_rate: 0.5 decay_step: 2",
                       metric_pb2.TrainMetricConfig())]
    p, y, _ = click_data(1200, seed=11)
    parts = np.array_split(np.arange(1200), 6)
    for i, s in enumerate(parts):
        ack = stub.Send(make_batch(preds=p[s], labels=y[s], phase=ingest_pb2.PHASE_TRAIN,
                                   step=10 * (i + 1), seq=i + 1,
                                   train_metrics=decl if i == 0 else None))
        assert ack.error_code == 0, ack.error_message
    body = get_metrics(http, phase="train")
    assert body["samples"] == 1200 and body["step"] == 60
    hist = http.get("/v1/experiments/exp/arms/control/history",
                    params={"task": "ctr", "phase": "train", "metric": "auc"}).json()
    assert [pt["step"] for pt in hist["points"]] == [20, 40, 60]
    assert hist["points"][-1]["value"] == pytest.approx(body["metrics"]["auc"], abs=1e-12)
    # decayed confusion state: the first window alone is exactly its binned AUC
    first = np.concatenate(parts[:2])
    assert hist["points"][0]["value"] == pytest.approx(roc_auc_score(y[first], p[first]),
                                                       abs=0.01)


def test_health_and_reflection(service) -> None:
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    with grpc.insecure_channel(service.grpc_target) as ch:
        status = health_pb2_grpc.HealthStub(ch).Check(
            health_pb2.HealthCheckRequest(service=SERVICE_NAME))
        assert status.status == health_pb2.HealthCheckResponse.SERVING
        responses = reflection_pb2_grpc.ServerReflectionStub(ch).ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
        names = {s.name for r in responses for s in r.list_services_response.service}
        assert SERVICE_NAME in names


def test_restart_keeps_state_and_idempotency(service_factory, tmp_path) -> None:
    import httpx

    p, y, g = click_data(600, seed=13)
    svc = service_factory(tmp_path / "d")
    with grpc.insecure_channel(svc.grpc_target) as ch:
        stub = ingest_pb2_grpc.IngestStub(ch)
        assert stub.Send(make_batch(preds=p[:300], labels=y[:300], keys={"u": g[:300]},
                                    seq=1)).error_code == 0
    svc.store.checkpoint()
    with grpc.insecure_channel(svc.grpc_target) as ch:
        stub = ingest_pb2_grpc.IngestStub(ch)
        assert stub.Send(make_batch(preds=p[300:], labels=y[300:], keys={"u": g[300:]},
                                    seq=2)).error_code == 0
    svc.stop()
    svc2 = service_factory(tmp_path / "d")
    with grpc.insecure_channel(svc2.grpc_target) as ch:
        ack = ingest_pb2_grpc.IngestStub(ch).Send(
            make_batch(preds=p[300:], labels=y[300:], keys={"u": g[300:]}, seq=2))
        assert ack.duplicate
    body = httpx.get(f"{svc2.http_url}/v1/experiments/exp/arms/control/metrics",
                     params={"task": "ctr"}).json()
    assert body["samples"] == 600
    assert body["metrics"]["auc"] == pytest.approx(roc_auc_score(y, p), abs=1e-9)
    assert body["metrics"]["grouped_auc"] == pytest.approx(ref_gauc(p, y, g), abs=1e-9)


def test_delete_experiment(stub, http) -> None:
    p, y, _ = click_data(100, seed=17)
    assert stub.Send(make_batch(preds=p, labels=y)).error_code == 0
    assert http.delete("/v1/experiments/exp").json() == {"experiment": "exp", "runs_deleted": 1}
    assert http.get("/v1/experiments").json() == {"experiments": []}
    assert http.delete("/v1/experiments/exp").status_code == 404
