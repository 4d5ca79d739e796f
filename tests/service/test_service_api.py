"""The service end to end: real gRPC and REST servers on loopback ports.

Reference values are computed independently with sklearn / numpy in the tests.
"""

from __future__ import annotations

import math
import time

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from sklearn.metrics import mean_absolute_error, mean_squared_error, roc_auc_score

from rankboard.protos import ingest_pb2, ingest_pb2_grpc, metric_pb2, parse_text
from rankboard.service.grpc_api import SERVICE_NAME
from rankboard.service.rest import models
from tests.helpers import make_batch, sklearn_gauc


def ref_ne(p: np.ndarray, y: np.ndarray, eta: float = 1e-12) -> float:
    p = np.clip(p.astype(np.float64), eta, 1 - eta)
    ce = -np.mean(y * np.log(p) + (1 - y) * np.log(1 - p))
    r = min(max(y.mean(), eta), 1 - eta)
    return ce / (-(r * math.log(r) + (1 - r) * math.log(1 - r)))


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
    assert body["metrics"]["grouped_auc"] == pytest.approx(sklearn_gauc(p, y, g), abs=1e-9)
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
    assert (
        stub.Send(
            make_batch(preds=p1, labels=y1, keys={"uid": g1}, metrics=decl, step=100, seq=1)
        ).error_code
        == 0
    )
    assert (
        stub.Send(make_batch(preds=p2, labels=y2, keys={"uid": g2}, step=200, seq=2)).error_code
        == 0
    )
    latest = get_metrics(http)
    assert latest["step"] == 200 and latest["samples"] == 400
    assert set(latest["metrics"]) == {"auc", "auc_2", "grouped_auc"}
    assert latest["metrics"]["auc"] == pytest.approx(roc_auc_score(y2, p2), abs=1e-9)
    first = get_metrics(http, step=100)
    assert first["metrics"]["auc"] == pytest.approx(roc_auc_score(y1, p1), abs=1e-9)
    assert first["metrics"]["grouped_auc"] == pytest.approx(sklearn_gauc(p1, y1, g1), abs=1e-9)
    hist = http.get(
        "/v1/experiments/exp/arms/control/history",
        params={"task": "ctr", "phase": "eval", "metric": "auc"},
    ).json()
    assert [pt["step"] for pt in hist["points"]] == [100, 200]
    assert hist["points"][0]["value"] == pytest.approx(roc_auc_score(y1, p1), abs=1e-9)


def test_compare_two_arms(stub, http) -> None:
    p, y, _ = click_data(1000, seed=7)
    noisy = np.clip(p + np.random.default_rng(8).normal(0, 0.3, 1000), 0, 1).astype(np.float32)
    assert stub.Send(make_batch(preds=p, labels=y, arm="control", seq=1)).error_code == 0
    assert stub.Send(make_batch(preds=noisy, labels=y, arm="treatment", seq=2)).error_code == 0
    r = http.get(
        "/v1/experiments/exp/compare",
        params={"task": "ctr", "baseline": "control", "fresh": "true"},
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert models.Comparison.model_validate_json(r.content).model_dump() == body
    a_control, a_treat = roc_auc_score(y, p), roc_auc_score(y, noisy)
    assert body["arms"]["control"]["delta"]["auc"] == 0
    assert body["arms"]["treatment"]["metrics"]["auc"] == pytest.approx(a_treat, abs=1e-9)
    assert body["arms"]["treatment"]["delta"]["auc"] == pytest.approx(a_treat - a_control, abs=1e-9)
    exps = http.get("/v1/experiments").json()["experiments"]
    assert time.time() - 60 < exps[0].pop("updated_at") <= time.time()
    assert exps == [
        {
            "name": "exp",
            "arms": ["control", "treatment"],
            "tasks": ["ctr"],
            "phases": ["eval"],
            "samples": 2000,
        }
    ]
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
    decl = [
        parse_text(
            "auc { thresholds: 200 } decay_rate: 0.5 decay_step: 2", metric_pb2.TrainMetricConfig()
        )
    ]
    p, y, _ = click_data(1200, seed=11)
    parts = np.array_split(np.arange(1200), 6)
    for i, s in enumerate(parts):
        ack = stub.Send(
            make_batch(
                preds=p[s],
                labels=y[s],
                phase=ingest_pb2.PHASE_TRAIN,
                step=10 * (i + 1),
                seq=i + 1,
                train_metrics=decl if i == 0 else None,
            )
        )
        assert ack.error_code == 0, ack.error_message
    body = get_metrics(http, phase="train")
    assert body["samples"] == 1200 and body["step"] == 60
    hist = http.get(
        "/v1/experiments/exp/arms/control/history",
        params={"task": "ctr", "phase": "train", "metric": "auc"},
    ).json()
    assert [pt["step"] for pt in hist["points"]] == [20, 40, 60]
    assert hist["points"][-1]["value"] == pytest.approx(body["metrics"]["auc"], abs=1e-12)
    # decayed confusion state: the first window alone is exactly its binned AUC
    first = np.concatenate(parts[:2])
    assert hist["points"][0]["value"] == pytest.approx(roc_auc_score(y[first], p[first]), abs=0.01)


def test_health_and_reflection(service) -> None:
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    with grpc.insecure_channel(service.grpc_target) as ch:
        status = health_pb2_grpc.HealthStub(ch).Check(
            health_pb2.HealthCheckRequest(service=SERVICE_NAME)
        )
        assert status.status == health_pb2.HealthCheckResponse.SERVING
        responses = reflection_pb2_grpc.ServerReflectionStub(ch).ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")])
        )
        names = {s.name for r in responses for s in r.list_services_response.service}
        assert SERVICE_NAME in names


def test_restart_keeps_state_and_idempotency(service_factory, tmp_path) -> None:
    import httpx

    p, y, g = click_data(600, seed=13)
    svc = service_factory(tmp_path / "d")
    with grpc.insecure_channel(svc.grpc_target) as ch:
        stub = ingest_pb2_grpc.IngestStub(ch)
        assert (
            stub.Send(
                make_batch(preds=p[:300], labels=y[:300], keys={"u": g[:300]}, seq=1)
            ).error_code
            == 0
        )
    svc.store.checkpoint()
    with grpc.insecure_channel(svc.grpc_target) as ch:
        stub = ingest_pb2_grpc.IngestStub(ch)
        assert (
            stub.Send(
                make_batch(preds=p[300:], labels=y[300:], keys={"u": g[300:]}, seq=2)
            ).error_code
            == 0
        )
    svc.stop()
    svc2 = service_factory(tmp_path / "d")
    with grpc.insecure_channel(svc2.grpc_target) as ch:
        ack = ingest_pb2_grpc.IngestStub(ch).Send(
            make_batch(preds=p[300:], labels=y[300:], keys={"u": g[300:]}, seq=2)
        )
        assert ack.duplicate
    body = httpx.get(
        f"{svc2.http_url}/v1/experiments/exp/arms/control/metrics", params={"task": "ctr"}
    ).json()
    assert body["samples"] == 600
    assert body["metrics"]["auc"] == pytest.approx(roc_auc_score(y, p), abs=1e-9)
    assert body["metrics"]["grouped_auc"] == pytest.approx(sklearn_gauc(p, y, g), abs=1e-9)


def test_delete_experiment(stub, http) -> None:
    p, y, _ = click_data(100, seed=17)
    assert stub.Send(make_batch(preds=p, labels=y)).error_code == 0
    assert http.delete("/v1/experiments/exp").json() == {"experiment": "exp", "runs_deleted": 1}
    assert http.get("/v1/experiments").json() == {"experiments": []}
    assert http.delete("/v1/experiments/exp").status_code == 404


def _in_process(configs, batches, train: bool = False):
    """The same metrics updated in this process with the same batches, in the same order."""
    import torch

    from rankboard.service import metrics as rbm

    metrics = rbm.create_train_metrics(configs) if train else rbm.create_metrics(configs)
    history: dict[str, list[float]] = {k: [] for k in metrics}
    for p, y, g in batches:
        refreshed = False
        for m in metrics.values():
            kwargs = {"grouping_key": torch.from_numpy(g)} if m.needs_grouping_key else {}
            m.update(torch.from_numpy(p), torch.from_numpy(y), **kwargs)
            refreshed |= bool(getattr(m, "refreshed", False))
        if train and refreshed:
            for k, m in metrics.items():
                history[k].append(float(m.compute()))
    return {k: float(m.compute()) for k, m in metrics.items()}, history


def test_rest_values_equal_in_process_computation_exactly(stub, http) -> None:
    p, y, g = click_data(3000, seed=31)
    parts = [(p[s], y[s], g[s]) for s in np.array_split(np.arange(3000), 5)]
    for i, (pp, yy, gg) in enumerate(parts):
        assert (
            stub.Send(make_batch(preds=pp, labels=yy, keys={"user_id": gg}, seq=i + 1)).error_code
            == 0
        )
    configs = [
        parse_text(t, metric_pb2.MetricConfig())
        for t in (
            "auc { thresholds: 0 }",
            "normalized_entropy {}",
            'grouped_auc { grouping_key: "user_id" }',
        )
    ]
    expected, _ = _in_process(configs, parts)
    assert get_metrics(http)["metrics"] == expected  # exact, not approximately

    # real-valued labels: xauc, mse, mae
    rng = np.random.default_rng(32)
    t = rng.exponential(30, 600).round(0).astype(np.float32)
    q = (t + rng.normal(0, 20, 600)).astype(np.float32)
    rparts = [(q[s], t[s], g[:0]) for s in np.array_split(np.arange(600), 3)]
    for i, (qq, tt, _) in enumerate(rparts):
        assert stub.Send(make_batch(preds=qq, labels=tt, task="wt", seq=10 + i)).error_code == 0
    configs = [
        parse_text(f"{n} {{}}", metric_pb2.MetricConfig())
        for n in ("xauc", "mean_squared_error", "mean_absolute_error")
    ]
    expected, _ = _in_process(configs, rparts)
    assert get_metrics(http, task="wt")["metrics"] == expected

    # train: the decayed default metric and its history, value for value
    tparts = parts + parts[:3]
    decl = parse_text(
        "auc { thresholds: 200 } decay_rate: 0.5 decay_step: 2", metric_pb2.TrainMetricConfig()
    )
    for i, (pp, yy, _) in enumerate(tparts):
        assert (
            stub.Send(
                make_batch(
                    preds=pp,
                    labels=yy,
                    phase=ingest_pb2.PHASE_TRAIN,
                    step=i + 1,
                    seq=20 + i,
                    train_metrics=[decl] if i == 0 else None,
                )
            ).error_code
            == 0
        )
    expected, hist = _in_process([decl], [(pp, yy, gg[:0]) for pp, yy, gg in tparts], train=True)
    assert get_metrics(http, phase="train")["metrics"] == expected
    points = http.get(
        "/v1/experiments/exp/arms/control/history",
        params={"task": "ctr", "phase": "train", "metric": "auc"},
    ).json()["points"]
    assert [pt["value"] for pt in points] == hist["auc"] and len(points) == 4


@pytest.mark.parametrize(
    ("phase", "labels", "keys", "expected"),
    [
        (ingest_pb2.PHASE_EVAL, [0, 1, 0, 1], False, {"auc", "normalized_entropy"}),
        (ingest_pb2.PHASE_EVAL, [0, 1, 0, 1], True, {"auc", "normalized_entropy", "grouped_auc"}),
        (
            ingest_pb2.PHASE_EVAL,
            [0.5, 3, 0, 1],
            False,
            {"xauc", "mean_squared_error", "mean_absolute_error"},
        ),
        (ingest_pb2.PHASE_TRAIN, [0, 1, 0, 1], True, {"auc"}),
        (ingest_pb2.PHASE_TRAIN, [0.5, 3, 0, 1], False, {"mean_squared_error"}),
    ],
    ids=["eval-binary", "eval-binary-keys", "eval-real", "train-binary", "train-real"],
)
def test_default_metrics_per_label_type(stub, http, phase, labels, keys, expected) -> None:
    p = np.array([0.2, 0.7, 0.4, 0.9], np.float32)
    ack = stub.Send(
        make_batch(
            preds=p,
            labels=np.array(labels, np.float32),
            phase=phase,
            keys={"user_id": np.array([1, 1, 2, 2])} if keys else None,
        )
    )
    assert ack.error_code == 0, ack.error_message
    phase_name = "train" if phase == ingest_pb2.PHASE_TRAIN else "eval"
    assert set(get_metrics(http, phase=phase_name)["metrics"]) == expected
    run = http.get("/v1/experiments/exp").json()["runs"][0]
    assert run["declared"] is False and set(run["metrics"]) == expected


def test_undefined_metric_is_null(stub, http) -> None:
    p = np.array([0.2, 0.7, 0.4], np.float32)
    assert stub.Send(make_batch(preds=p, labels=np.ones(3, np.float32))).error_code == 0
    r = http.get("/v1/experiments/exp/arms/control/metrics", params={"task": "ctr"})
    assert r.status_code == 200 and '"auc":null' in r.text.replace(" ", "")  # one class
    assert r.json()["metrics"]["auc"] is None


def test_compare_every_delta_against_independent_values(stub, http) -> None:
    arms = {}
    for i, arm in enumerate(["control", "t1", "t2"]):
        p, y, g = click_data(1500, seed=40 + i)
        arms[arm] = (p, y, g)
        assert (
            stub.Send(
                make_batch(preds=p, labels=y, keys={"user_id": g}, arm=arm, step=5, seq=i + 1)
            ).error_code
            == 0
        )
    ref = {
        arm: {
            "auc": roc_auc_score(y, p),
            "normalized_entropy": ref_ne(p, y),
            "grouped_auc": sklearn_gauc(p, y, g),
        }
        for arm, (p, y, g) in arms.items()
    }
    body = http.get(
        "/v1/experiments/exp/compare",
        params={"task": "ctr", "baseline": "t1", "step": 5, "fresh": "true"},
    ).json()
    assert body["baseline"] == "t1" and set(body["arms"]) == set(arms)
    for arm, got in body["arms"].items():
        assert got["step"] == 5 and got["samples"] == 1500
        for k, v in ref[arm].items():
            d = v - ref["t1"][k]
            assert got["metrics"][k] == pytest.approx(v, rel=1e-6, abs=1e-9)
            assert got["delta"][k] == pytest.approx(d, rel=1e-5, abs=1e-9)
            assert got["relative_delta"][k] == pytest.approx(
                d / abs(ref["t1"][k]), rel=1e-5, abs=1e-8
            )
        # delta is exactly the difference of the values the same response shows
        for k, v in got["metrics"].items():
            assert got["delta"][k] == v - body["arms"]["t1"]["metrics"][k]


def test_concurrent_producers_into_one_run(service, http) -> None:
    import threading

    p, y, g = click_data(8000, seed=50)
    shards = np.array_split(np.arange(8000), 4)
    errors: list[str] = []

    def produce(w: int) -> None:
        parts = np.array_split(shards[w], 10)
        msgs = [
            make_batch(preds=p[s], labels=y[s], keys={"user_id": g[s]}, producer=f"w{w}", seq=i + 1)
            for i, s in enumerate(parts)
        ]
        with grpc.insecure_channel(service.grpc_target) as ch:
            for ack in ingest_pb2_grpc.IngestStub(ch).Stream(iter(msgs + msgs[:3])):
                if ack.error_code:
                    errors.append(ack.error_message)

    threads = [threading.Thread(target=produce, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    body = get_metrics(http)
    assert body["samples"] == 8000
    assert body["metrics"]["auc"] == pytest.approx(roc_auc_score(y, p), abs=1e-9)
    assert body["metrics"]["grouped_auc"] == pytest.approx(sklearn_gauc(p, y, g), abs=1e-9)


def test_device_resolution() -> None:
    import torch

    from rankboard.service.server import resolve_device

    assert resolve_device("cpu") == "cpu"
    assert resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA device"):
            resolve_device("cuda")


def test_state_on_the_gpu_gives_the_cpu_values(service_factory, tmp_path) -> None:
    import httpx
    import torch

    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    p, y, g = click_data(4000, seed=60)
    bodies = []
    for device in ("cpu", "cuda"):
        svc = service_factory(tmp_path / device, device=device)
        with grpc.insecure_channel(svc.grpc_target) as ch:
            stub = ingest_pb2_grpc.IngestStub(ch)
            for i, s in enumerate(np.array_split(np.arange(4000), 4)):
                assert (
                    stub.Send(
                        make_batch(preds=p[s], labels=y[s], keys={"user_id": g[s]}, seq=i + 1)
                    ).error_code
                    == 0
                )
        run = svc.store.runs()[0]
        assert next(iter(run.windows[1].metrics.values())).device.type == device
        bodies.append(
            httpx.get(
                f"{svc.http_url}/v1/experiments/exp/arms/control/metrics",
                params={"task": "ctr", "fresh": "true"},
            ).json()["metrics"]
        )
    assert bodies[0]["grouped_auc"] == pytest.approx(bodies[1]["grouped_auc"], abs=1e-9)
    assert bodies[0]["auc"] == pytest.approx(bodies[1]["auc"], abs=1e-9)
