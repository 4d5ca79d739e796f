"""Every bad input gets a clear error with the right code and changes nothing."""

from __future__ import annotations

import grpc
import httpx
import numpy as np
import pytest

from rankboard.protos import ingest_pb2, ingest_pb2_grpc, metric_pb2, parse_text
from rankboard.service.state.store import StoreConfig
from tests.helpers import make_batch

P = np.array([0.1, 0.7, 0.4, 0.9], np.float32)
Y = np.array([0, 1, 0, 1], np.float32)
G = np.array([1, 1, 2, 2], np.int64)
GAUC = [parse_text('grouped_auc { grouping_key: "uid" }', metric_pb2.MetricConfig())]


def state(http: httpx.Client) -> dict:
    r = http.get(
        "/v1/experiments/exp/arms/control/metrics", params={"task": "ctr", "fresh": "true"}
    )
    assert r.status_code == 200, r.text
    body = r.json()
    return {"samples": body["samples"], "metrics": body["metrics"], "version": body["version"]}


@pytest.fixture
def seeded(stub, http) -> dict:
    assert (
        stub.Send(make_batch(preds=P, labels=Y, keys={"uid": G}, metrics=GAUC, seq=1)).error_code
        == 0
    )
    return state(http)


def _bad(msg: ingest_pb2.Batch, **changes: object) -> ingest_pb2.Batch:
    out = ingest_pb2.Batch()
    out.CopyFrom(msg)
    for k, v in changes.items():
        if isinstance(v, ingest_pb2.Array):
            getattr(out, k).CopyFrom(v)
        else:
            setattr(out, k, v)
    return out


GOOD = dict(preds=P, labels=Y, keys={"uid": G}, seq=2)


@pytest.mark.parametrize(
    ("batch", "code", "words"),
    [
        (make_batch(preds=P[:3], labels=Y, keys={"uid": G}, seq=2), 3, "length mismatch"),
        (
            make_batch(preds=np.array([0.1, np.nan, 0.2, 0.3]), labels=Y, keys={"uid": G}, seq=2),
            3,
            "NaN",
        ),
        (
            make_batch(preds=np.array([0.1, np.inf, 0.2, 0.3]), labels=Y, keys={"uid": G}, seq=2),
            3,
            "infinite",
        ),
        (
            make_batch(preds=P, labels=np.array([0, np.nan, 0, 1]), keys={"uid": G}, seq=2),
            3,
            "labels contain NaN",
        ),
        (make_batch(preds=P, labels=np.array([0, 2, 0, 1]), keys={"uid": G}, seq=2), 3, "0 or 1"),
        (make_batch(preds=P, labels=np.array([0, 0.5, 0, 1]), keys={"uid": G}, seq=2), 3, "0 or 1"),
        (make_batch(preds=P, labels=Y, seq=2), 3, "grouping key"),
        (make_batch(preds=P, labels=Y, keys={"other": G}, seq=2), 3, "uid"),
        (make_batch(preds=P[:0], labels=Y[:0], keys={"uid": G[:0]}, seq=2), 3, "empty"),
        (make_batch(preds=P, labels=Y, keys={"uid": G[:2]}, seq=2), 3, "length mismatch"),
        (
            make_batch(preds=P, labels=Y, keys={"uid": G}, seq=2, weights=np.array([1, -1, 1, 1])),
            3,
            "weights",
        ),
        (make_batch(preds=P, labels=Y, keys={"uid": G}, seq=2, arm="bad arm!"), 3, "arm"),
        (make_batch(preds=P, labels=Y, keys={"uid": G}, seq=2, phase=0), 3, "phase"),
        (
            make_batch(
                preds=P,
                labels=Y,
                keys={"uid": G},
                seq=2,
                metrics=[parse_text("auc {}", metric_pb2.MetricConfig())],
            ),
            9,
            "declared",
        ),
        (
            make_batch(
                preds=P,
                labels=Y,
                keys={"uid": G},
                seq=2,
                train_metrics=[metric_pb2.TrainMetricConfig(auc=metric_pb2.AUC())],
            ),
            3,
            "train_metrics",
        ),
    ],
    ids=[
        "length",
        "nan",
        "inf",
        "label-nan",
        "label-2",
        "label-half",
        "no-keys",
        "wrong-key-name",
        "empty",
        "key-length",
        "neg-weight",
        "bad-name",
        "no-phase",
        "declaration-change",
        "train-decl-in-eval",
    ],
)
def test_bad_batch_rejected_state_unchanged(stub, http, seeded, batch, code, words) -> None:
    ack = stub.Send(batch)
    assert ack.error_code == code, ack.error_message
    assert words in ack.error_message
    assert state(http) == seeded
    # the rejected sequence was not recorded: the same sequence with good data applies
    ok = stub.Send(make_batch(**GOOD))
    assert ok.error_code == 0 and not ok.duplicate


def test_bad_buffers(stub, http, seeded) -> None:
    good = make_batch(**GOOD)
    odd = _bad(good, labels=ingest_pb2.Array(dtype=ingest_pb2.DTYPE_FLOAT32, data=b"\0" * 7))
    no_dtype = _bad(good, predictions=ingest_pb2.Array(data=P.tobytes()))
    float_keys = _bad(good)
    float_keys.grouping_keys[0].keys.CopyFrom(
        ingest_pb2.Array(dtype=ingest_pb2.DTYPE_FLOAT32, data=P.tobytes())
    )
    for msg in (odd, no_dtype, float_keys, _bad(good, producer_id="")):
        ack = stub.Send(msg)
        assert ack.error_code == 3, ack.error_message
    assert state(http) == seeded


def test_stream_continues_after_a_bad_batch(stub, http, seeded) -> None:
    bad = make_batch(preds=P[:2], labels=Y, keys={"uid": G}, seq=2)
    good = make_batch(preds=P, labels=Y, keys={"uid": G}, seq=3)
    acks = list(stub.Stream(iter([bad, good])))
    assert [a.error_code for a in acks] == [3, 0]
    assert state(http)["samples"] == seeded["samples"] + 4


def test_oversized_message(service_factory) -> None:
    svc = service_factory(max_message_bytes=10_000)
    n = 5000
    with grpc.insecure_channel(svc.grpc_target) as ch, httpx.Client(base_url=svc.http_url) as http:
        stub = ingest_pb2_grpc.IngestStub(ch)
        assert (
            stub.Send(
                make_batch(preds=P, labels=Y, keys={"uid": G}, metrics=GAUC, seq=1)
            ).error_code
            == 0
        )
        before = state(http)
        with pytest.raises(grpc.RpcError) as err:
            stub.Send(make_batch(preds=np.zeros(n), labels=np.zeros(n), seq=2))
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        with pytest.raises(grpc.RpcError) as err:  # on a stream too
            list(stub.Stream(iter([make_batch(preds=np.zeros(n), labels=np.zeros(n), seq=2)])))
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert state(http) == before


def test_oversized_batch(service_factory) -> None:
    """A batch over the per-batch sample limit (under the message size limit)."""
    svc = service_factory(store=StoreConfig(max_samples_per_batch=4))
    with grpc.insecure_channel(svc.grpc_target) as ch, httpx.Client(base_url=svc.http_url) as http:
        stub = ingest_pb2_grpc.IngestStub(ch)
        assert (
            stub.Send(
                make_batch(preds=P, labels=Y, keys={"uid": G}, metrics=GAUC, seq=1)
            ).error_code
            == 0
        )
        before = state(http)
        five = np.append(P, 0.5)
        ack = stub.Send(
            make_batch(preds=five, labels=np.append(Y, 1), seq=2, keys={"uid": np.append(G, 3)})
        )
        assert ack.error_code == 3 and "over the limit" in ack.error_message
        assert state(http) == before


def test_capacity_cap(service_factory) -> None:
    svc = service_factory(store=StoreConfig(max_samples_per_run=6))
    with grpc.insecure_channel(svc.grpc_target) as ch:
        stub = ingest_pb2_grpc.IngestStub(ch)
        assert stub.Send(make_batch(preds=P, labels=Y, seq=1)).error_code == 0
        ack = stub.Send(make_batch(preds=P, labels=Y, seq=2))
        assert ack.error_code == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
        assert "cap" in ack.error_message
    body = httpx.get(f"{svc.http_url}/v1/experiments/exp").json()
    assert body["samples"] == 4


def test_global_capacity_cap(service_factory) -> None:
    svc = service_factory(store=StoreConfig(max_samples_total=10))
    with grpc.insecure_channel(svc.grpc_target) as ch:
        stub = ingest_pb2_grpc.IngestStub(ch)
        for i, arm in enumerate(["a", "b"]):
            assert stub.Send(make_batch(preds=P, labels=Y, arm=arm, seq=i + 1)).error_code == 0
        before = httpx.get(f"{svc.http_url}/v1/experiments").json()
        ack = stub.Send(make_batch(preds=P, labels=Y, arm="c", seq=3))  # a third run: 12 > 10
        assert ack.error_code == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
        assert "max-samples-total" in ack.error_message
        assert httpx.get(f"{svc.http_url}/v1/experiments").json() == before
        # deleting an experiment frees room
        assert httpx.delete(f"{svc.http_url}/v1/experiments/exp").status_code == 200
        assert stub.Send(make_batch(preds=P, labels=Y, arm="c", seq=3)).error_code == 0


@pytest.mark.parametrize(
    ("path", "params", "status"),
    [
        ("/v1/experiments/nope", {}, 404),
        ("/v1/experiments/exp/arms/nope/metrics", {"task": "ctr"}, 404),
        ("/v1/experiments/exp/arms/control/metrics", {"task": "cvr"}, 404),
        ("/v1/experiments/exp/arms/control/metrics", {"task": "ctr", "step": 99}, 404),
        ("/v1/experiments/exp/arms/control/metrics", {"task": "ctr", "phase": "test"}, 422),
        ("/v1/experiments/exp/arms/control/metrics", {"task": "ctr", "step": "x"}, 422),
        ("/v1/experiments/exp/arms/control/metrics", {"task": "ctr", "step": -1}, 422),
        ("/v1/experiments/exp/arms/control/metrics", {}, 422),
        ("/v1/experiments/exp/compare", {"task": "ctr", "baseline": "nope"}, 404),
        ("/v1/experiments/exp/compare", {"task": "ctr"}, 422),
        ("/v1/experiments/exp/arms/control/history", {"task": "ctr", "metric": "nope"}, 404),
        ("/v1/experiments/exp/arms/nope/history", {"task": "ctr", "metric": "auc"}, 404),
        ("/v1/experiments/exp/arms/control/history", {"task": "cvr", "metric": "auc"}, 404),
        ("/v1/experiments/exp/arms/control/history", {"task": "ctr"}, 422),
        (
            "/v1/experiments/exp/arms/control/history",
            {"task": "ctr", "metric": "auc", "phase": "x"},
            422,
        ),
        ("/v1/experiments/exp/arms/control/metrics", {"task": "ctr", "phase": "train"}, 404),
        ("/v1/experiments/exp/arms/control/metrics", {"task": "c" * 129}, 422),
        ("/v1/experiments/exp/arms/control/metrics", {"task": "ctr", "fresh": "maybe"}, 422),
        ("/v1/experiments/nope/arms/control/metrics", {"task": "ctr"}, 404),
        ("/v1/experiments/nope/compare", {"task": "ctr", "baseline": "control"}, 404),
        ("/v1/experiments/exp/compare", {"task": "cvr", "baseline": "control"}, 404),
        ("/v1/experiments/exp/compare", {"task": "ctr", "baseline": "control", "step": 9}, 404),
        ("/v1/experiments/exp/compare", {"task": "ctr", "baseline": "control", "step": "x"}, 422),
        ("/v1/experiments/exp/compare", {"baseline": "control"}, 422),
    ],
)
def test_bad_queries(http, seeded, path, params, status) -> None:
    r = http.get(path, params=params)
    assert r.status_code == status, r.text
    assert r.json()["detail"]
    assert state(http) == seeded


def test_tokens_enforced(service_factory) -> None:
    svc = service_factory(token="w-secret", read_token="r-secret")
    good_md = (("authorization", "Bearer w-secret"),)
    with grpc.insecure_channel(svc.grpc_target) as ch:
        stub = ingest_pb2_grpc.IngestStub(ch)
        for md in (None, (("authorization", "Bearer nope"),)):
            with pytest.raises(grpc.RpcError) as err:
                stub.Send(make_batch(preds=P, labels=Y), metadata=md)
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
            with pytest.raises(grpc.RpcError) as err:
                list(stub.Stream(iter([make_batch(preds=P, labels=Y)]), metadata=md))
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert stub.Send(make_batch(preds=P, labels=Y), metadata=good_md).error_code == 0
    url = f"{svc.http_url}/v1/experiments"
    assert httpx.get(url).status_code == 401
    assert httpx.get(url, headers={"Authorization": "Bearer w-secret"}).status_code == 401
    ok = httpx.get(url, headers={"Authorization": "Bearer r-secret"})
    assert ok.status_code == 200 and ok.json()["experiments"][0]["samples"] == 4
    assert httpx.get(f"{svc.http_url}/healthz").status_code == 200
    for headers in ({}, {"Authorization": "Bearer r-secret"}, {"Authorization": "Bearer x"}):
        assert httpx.delete(f"{url}/exp", headers=headers).status_code == 401
    assert (
        httpx.get(url, headers={"Authorization": "Bearer r-secret"}).json()["experiments"][0][
            "samples"
        ]
        == 4
    )
    deleted = httpx.delete(f"{url}/exp", headers={"Authorization": "Bearer w-secret"})
    assert deleted.status_code == 200 and deleted.json()["runs_deleted"] == 1
    assert httpx.get(url, headers={"Authorization": "Bearer r-secret"}).json() == {
        "experiments": []
    }


def test_rejected_credentials_change_nothing(service_factory) -> None:
    svc = service_factory(token="w-secret")
    good_md = (("authorization", "Bearer w-secret"),)
    with grpc.insecure_channel(svc.grpc_target) as ch, httpx.Client(base_url=svc.http_url) as http:
        stub = ingest_pb2_grpc.IngestStub(ch)
        assert (
            stub.Send(
                make_batch(preds=P, labels=Y, keys={"uid": G}, metrics=GAUC, seq=1),
                metadata=good_md,
            ).error_code
            == 0
        )
        before = state(http)  # no read token: reads are open
        for md in (None, (("authorization", "w-secret"),), (("authorization", "Bearer w"),)):
            with pytest.raises(grpc.RpcError) as err:
                stub.Send(make_batch(**GOOD), metadata=md)
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert http.delete("/v1/experiments/exp").status_code == 401
        assert state(http) == before
        # the refused sequence was not recorded either
        ack = stub.Send(make_batch(**GOOD), metadata=good_md)
        assert ack.error_code == 0 and not ack.duplicate


def test_read_token_alone_also_guards_deletes(service_factory) -> None:
    svc = service_factory(read_token="r-secret")
    with grpc.insecure_channel(svc.grpc_target) as ch:
        assert ingest_pb2_grpc.IngestStub(ch).Send(make_batch(preds=P, labels=Y)).error_code == 0
    url = f"{svc.http_url}/v1/experiments/exp"
    assert httpx.delete(url).status_code == 401
    assert httpx.get(url, headers={"Authorization": "Bearer r-secret"}).status_code == 200
    assert httpx.delete(url, headers={"Authorization": "Bearer r-secret"}).status_code == 200
