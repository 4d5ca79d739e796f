"""Property-based tests: random malformed batches and queries at the gRPC and REST
layers always get a clear error status, never crash the service, and a rejected
batch leaves the state as it was."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rankboard.protos import ingest_pb2, ingest_pb2_grpc
from rankboard.service.server import Service, ServiceConfig, run_service
from tests.helpers import make_batch

SETTINGS = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
BATCH_ERRORS = {3, 8, 9}


@pytest.fixture(scope="module")
def svc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    data: Path = tmp_path_factory.mktemp("fuzz")
    with run_service(ServiceConfig(data_dir=data, device="cpu")) as service:
        with grpc.insecure_channel(service.grpc_target) as ch:
            stub = ingest_pb2_grpc.IngestStub(ch)
            p = np.array([0.2, 0.8, 0.5, 0.4], np.float32)
            y = np.array([0, 1, 1, 0], np.float32)
            assert (
                stub.Send(
                    make_batch(preds=p, labels=y, keys={"uid": [1, 1, 2, 2]}, producer="seed")
                ).error_code
                == 0
            )
        yield service


def everything(base: str) -> dict:
    with httpx.Client(base_url=base) as http:
        exps = http.get("/v1/experiments").json()
        m = http.get(
            "/v1/experiments/exp/arms/control/metrics", params={"task": "ctr", "fresh": "true"}
        ).json()
    return {"experiments": exps, "metrics": m["metrics"], "samples": m["samples"]}


arrays = st.builds(
    ingest_pb2.Array,
    dtype=st.integers(0, 6),
    data=st.one_of(
        st.binary(max_size=64),
        st.lists(st.floats(allow_nan=True, allow_infinity=True, width=32), max_size=8).map(
            lambda v: np.array(v, np.float32).tobytes()
        ),
    ),
)
names = st.one_of(st.just("exp"), st.just("control"), st.just("ctr"), st.text(max_size=12))
batches = st.builds(
    ingest_pb2.Batch,
    producer_id=st.one_of(st.just("fuzz"), st.text(max_size=300)),
    sequence=st.integers(0, 2**64 - 1),
    experiment=names,
    arm=names,
    task=names,
    phase=st.integers(0, 3),
    step=st.integers(-(2**63), 2**63 - 1),
    predictions=arrays,
    labels=arrays,
    weights=st.one_of(st.none(), arrays),
    num_classes=st.integers(0, 5),
    grouping_keys=st.lists(st.builds(ingest_pb2.KeyColumn, name=names, keys=arrays), max_size=2),
    segments=st.lists(
        st.builds(
            ingest_pb2.StepSegment,
            step=st.integers(-(2**63), 2**63 - 1),
            samples=st.integers(0, 2**64 - 1),
        ),
        max_size=3,
    ),
)


@SETTINGS
@given(msg=batches)
def test_random_batches_get_clear_errors(svc: Service, msg: ingest_pb2.Batch) -> None:
    before = everything(svc.http_url)
    with grpc.insecure_channel(svc.grpc_target) as ch:
        ack = ingest_pb2_grpc.IngestStub(ch).Send(msg)
    if ack.error_code:
        assert ack.error_code in BATCH_ERRORS, ack.error_message
        assert ack.error_message
        assert everything(svc.http_url) == before


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(msgs=st.lists(batches, min_size=1, max_size=5))
def test_random_batches_on_a_stream(svc: Service, msgs: list[ingest_pb2.Batch]) -> None:
    """One ack per batch, in order; a bad batch does not end the stream; if every batch is
    refused, nothing changed."""
    before = everything(svc.http_url)
    with grpc.insecure_channel(svc.grpc_target) as ch:
        acks = list(ingest_pb2_grpc.IngestStub(ch).Stream(iter(msgs)))
    assert [(a.producer_id, a.sequence) for a in acks] == [
        (m.producer_id, m.sequence) for m in msgs
    ]
    for ack in acks:
        assert ack.error_code in BATCH_ERRORS | {0}, ack.error_message
        assert bool(ack.error_message) == bool(ack.error_code)
    if all(a.error_code or a.duplicate for a in acks):
        assert everything(svc.http_url) == before


@SETTINGS
@given(raw=st.binary(max_size=256))
def test_undecodable_bytes(svc: Service, raw: bytes) -> None:
    before = everything(svc.http_url)
    with grpc.insecure_channel(svc.grpc_target) as ch:
        send = ch.unary_unary(
            "/rankboard.v1.Ingest/Send",
            request_serializer=lambda b: b,
            response_deserializer=ingest_pb2.Ack.FromString,
        )
        try:
            ack = send(raw)
        except grpc.RpcError as err:
            assert err.code() in (grpc.StatusCode.INTERNAL, grpc.StatusCode.INVALID_ARGUMENT)
            assert "Exception deserializing" in (err.details() or "") or err.details()
        else:
            assert ack.error_code in BATCH_ERRORS | {0}
            if ack.error_code == 0 and not ack.duplicate:
                return
    assert everything(svc.http_url) == before


segments = st.one_of(
    st.just("exp"),
    st.just("control"),
    st.just("nope"),
    st.text(
        alphabet=st.characters(min_codepoint=33, max_codepoint=126, exclude_characters="/?#%\\"),
        min_size=1,
        max_size=10,
    ),
)
params = st.dictionaries(
    st.sampled_from(["task", "phase", "step", "baseline", "metric", "fresh"]),
    st.one_of(
        st.just("ctr"),
        st.just("eval"),
        st.just("train"),
        st.just("auc"),
        st.just("control"),
        st.text(max_size=6),
        st.integers(-5, 5).map(str),
    ),
    max_size=6,
)


@SETTINGS
@given(
    exp=segments,
    arm=segments,
    kind=st.sampled_from(["metrics", "history", "compare"]),
    query=params,
)
def test_random_queries_get_clear_statuses(
    svc: Service, exp: str, arm: str, kind: str, query: dict
) -> None:
    path = (
        f"/v1/experiments/{exp}/compare"
        if kind == "compare"
        else f"/v1/experiments/{exp}/arms/{arm}/{kind}"
    )
    before = everything(svc.http_url)
    r = httpx.get(svc.http_url + path, params=query)
    assert r.status_code in (200, 404, 422), (path, query, r.text)
    if r.status_code != 200:
        assert r.json()["detail"]
    assert everything(svc.http_url) == before
