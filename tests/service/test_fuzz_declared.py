"""Fuzzing against declared runs that already hold state (issue 15, "Also").

Batches here are well-formed on the wire but randomly wrong for the state they would
update: multi-metric and multi-class runs, several step segments, sample ids, weights and
grouping keys of the wrong length, dtype, sign or class count. Every refused batch must
leave the REST state byte-identical, and a restart must serve exactly what was served
before it (replay never meets a refused batch).
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rankboard.protos import ingest_pb2, ingest_pb2_grpc, metric_pb2, parse_text
from rankboard.service.server import Service, ServiceConfig, run_service
from rankboard.service.state.batch import encode_array

BINARY = [
    parse_text(t, metric_pb2.MetricConfig())
    for t in (
        "auc { thresholds: 0 }",
        "auc { bins: 50 }",
        'grouped_auc { grouping_key: "uid" }',
        "normalized_entropy {}",
    )
]
MULTI = [
    parse_text(t, metric_pb2.MetricConfig())
    for t in ("multiclass_auc { thresholds: 0 }", "accuracy {}")
]
TRAIN = [parse_text("auc { thresholds: 100 } decay_step: 2", metric_pb2.TrainMetricConfig())]
RUNS = {  # task -> (phase, classes, declaration)
    "ctr": (ingest_pb2.PHASE_EVAL, 0, BINARY),
    "cls": (ingest_pb2.PHASE_EVAL, 3, MULTI),
    "tr": (ingest_pb2.PHASE_TRAIN, 0, TRAIN),
}


def make(task: str, seq: int, rng: np.random.Generator, n: int, **bad: object) -> ingest_pb2.Batch:
    phase, classes, decl = RUNS[task]
    classes = int(bad.get("classes", classes))
    width = max(classes, 1)
    preds = rng.random(n * width).astype(np.float32)
    if classes:
        preds = (preds.reshape(n, width) / preds.reshape(n, width).sum(1, keepdims=True)).ravel()
    labels = rng.integers(0, max(classes, 2), n).astype(np.float32)
    msg = ingest_pb2.Batch(
        producer_id=str(bad.get("producer", "fuzz")),
        sequence=seq,
        experiment="exp",
        arm="control",
        task=task,
        phase=phase,
        step=int(bad.get("step", 1)),
        predictions=encode_array(bad.get("preds", preds)),
        labels=encode_array(bad.get("labels", labels)),
        num_classes=classes,
    )
    target = msg.train_metrics if phase == ingest_pb2.PHASE_TRAIN else msg.metrics
    target.extend(bad.get("decl", decl))
    keys = bad.get("keys", rng.integers(0, 4, n))
    if keys is not None:
        msg.grouping_keys.add(name=str(bad.get("key_name", "uid")), keys=encode_array(keys))
    if "weights" in bad:
        msg.weights.CopyFrom(encode_array(bad["weights"]))
    ids = bad.get("ids", np.arange(seq * 1000, seq * 1000 + n, dtype=np.int64))
    if ids is not None:
        msg.sample_ids.CopyFrom(encode_array(ids))
    for step, count in bad.get("segments", []):
        msg.segments.add(step=step, samples=count)
    return msg


def everything(base: str) -> str:
    """Every number the REST API serves for experiment ``exp``, as canonical JSON."""
    out: dict = {}
    with httpx.Client(base_url=base, timeout=60) as http:
        detail = http.get("/v1/experiments/exp")
        if detail.status_code == 404:
            return "{}"
        body = detail.json()
        body.pop("updated_at", None)
        for run in body["runs"]:
            run.pop("updated_at", None)
        out["detail"] = body
        for run in body["runs"]:
            for step in run["steps"] or [None]:
                params = {"task": run["task"], "phase": run["phase"], "fresh": True}
                if step is not None:
                    params["step"] = step
                m = http.get(f"/v1/experiments/exp/arms/{run['arm']}/metrics", params=params)
                snap = m.json()
                for k in ("computed_at", "stale", "version"):
                    snap.pop(k, None)
                out[f"{run['task']}/{run['phase']}/{step}"] = snap
            for metric in run["metrics"]:
                h = http.get(
                    f"/v1/experiments/exp/arms/{run['arm']}/history",
                    params={"task": run["task"], "phase": run["phase"], "metric": metric},
                )
                out[f"{run['task']}/{run['phase']}/history/{metric}"] = h.json()
    return json.dumps(out, sort_keys=True)


def seeded(service: Service) -> None:
    rng = np.random.default_rng(0)
    with grpc.insecure_channel(service.grpc_target) as ch:
        stub = ingest_pb2_grpc.IngestStub(ch)
        for seq, task in enumerate(RUNS, start=1):
            ack = stub.Send(make(task, seq, rng, 40))
            assert ack.error_code == 0, ack.error_message


@pytest.fixture(scope="module")
def svc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    data: Path = tmp_path_factory.mktemp("fuzz-declared")
    with run_service(ServiceConfig(data_dir=data, device="cpu")) as service:
        seeded(service)
        yield service


def bad_batch(kind: str, task: str, seq: int, rng: np.random.Generator) -> ingest_pb2.Batch:
    """A batch of ``task`` broken in the way ``kind`` says (each one must be refused)."""
    n = 12
    if kind == "classes":  # another class count than the step's state
        return make("cls", seq, rng, n, classes=4)
    if kind == "segment_classes":  # a new step (fine) and step 1 with another class count
        return make("cls", seq, rng, n, classes=4, segments=[(2, 6), (1, 6)])
    if kind == "label_out_of_range":
        labels = np.full(n, 7 if task == "cls" else 2, np.float32)
        return make(task, seq, rng, n, labels=labels)
    if kind == "ids_length":
        return make(task, seq, rng, n, ids=np.arange(n - 1, dtype=np.int64))
    if kind == "ids_dtype":
        return make(task, seq, rng, n, ids=np.arange(n, dtype=np.float32))
    if kind == "negative_weight":
        return make(task, seq, rng, n, weights=-np.ones(n, np.float32))
    if kind == "huge_weight":
        return make(task, seq, rng, n, weights=np.full(n, 1e39, np.float64))
    if kind == "missing_key":
        return make("ctr", seq, rng, n, keys=None)
    if kind == "keys_length":
        return make(task, seq, rng, n, keys=np.arange(n + 2, dtype=np.int64))
    if kind == "redeclare":
        cls = metric_pb2.TrainMetricConfig if task == "tr" else metric_pb2.MetricConfig
        return make(task, seq, rng, n, decl=[parse_text("accuracy {}", cls())])
    if kind == "segments_sum":
        return make(task, seq, rng, n, segments=[(1, 5), (2, 5)])
    if kind == "pred_out_of_range":  # binned AUC needs probabilities; NaN is never valid
        bad = np.full(n * (3 if task == "cls" else 1), np.nan if task == "cls" else 1.5, "f4")
        return make(task, seq, rng, n, preds=bad)
    raise AssertionError(kind)


_PRODUCERS = itertools.count()
KINDS = [
    "classes",
    "segment_classes",
    "label_out_of_range",
    "ids_length",
    "ids_dtype",
    "negative_weight",
    "huge_weight",
    "missing_key",
    "keys_length",
    "redeclare",
    "segments_sum",
    "pred_out_of_range",
]


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    kinds=st.lists(st.sampled_from(KINDS), min_size=1, max_size=3),
    task=st.sampled_from(list(RUNS)),
    seed=st.integers(0, 2**32 - 1),
    stream=st.booleans(),
)
def test_refused_batches_change_nothing(
    svc: Service, kinds: list[str], task: str, seed: int, stream: bool
) -> None:
    rng = np.random.default_rng(seed)
    msgs = [bad_batch(k, task, 10_000 + i, rng) for i, k in enumerate(kinds)]
    for m in msgs:
        m.producer_id = f"fuzz-{next(_PRODUCERS)}"  # never a duplicate of an earlier example
    before = everything(svc.http_url)
    with grpc.insecure_channel(svc.grpc_target) as ch:
        stub = ingest_pb2_grpc.IngestStub(ch)
        acks = list(stub.Stream(iter(msgs))) if stream else [stub.Send(m) for m in msgs]
    for kind, ack in zip(kinds, acks, strict=True):
        assert ack.error_code in (3, 9), (kind, task, ack)
        assert ack.error_message
    assert everything(svc.http_url) == before


def test_mixed_stream_then_restart_serves_the_same(tmp_path: Path) -> None:
    """200 batches, good and bad interleaved on streams; after a restart (checkpoint + log
    replay) every served number is identical."""
    rng = np.random.default_rng(42)
    data = tmp_path / "data"
    with run_service(ServiceConfig(data_dir=data, device="cpu")) as service:
        seeded(service)
        seq = 100
        with grpc.insecure_channel(service.grpc_target) as ch:
            stub = ingest_pb2_grpc.IngestStub(ch)
            for round_ in range(10):
                msgs, expect_ok = [], []
                for _ in range(20):
                    seq += 1
                    task = str(rng.choice(list(RUNS)))
                    if rng.random() < 0.5:
                        kind = str(rng.choice(KINDS))
                        msgs.append(bad_batch(kind, task, seq, rng))
                        expect_ok.append(False)
                    else:
                        segs = [] if rng.random() < 0.5 else [(1, 4), (int(rng.integers(1, 4)), 8)]
                        msgs.append(make(task, seq, rng, 12, segments=segs))
                        expect_ok.append(True)
                acks = list(stub.Stream(iter(msgs)))
                for ok, ack in zip(expect_ok, acks, strict=True):
                    assert (ack.error_code == 0) == ok, ack
                if round_ == 4:
                    service.store.checkpoint()  # half from the checkpoint, half replayed
        before = everything(service.http_url)
    with run_service(ServiceConfig(data_dir=data, device="cpu")) as again:
        assert everything(again.http_url) == before
