"""Issue 15 items 2-4: a refused batch changes nothing, now and after a restart.

Each test fails on the code before its fix: a multi-class batch whose class count differs
from its step's state was logged, half applied and answered INTERNAL; float64 values
beyond float32's range passed as finite and turned metrics into null for good; names
with a trailing newline were accepted.
"""

from __future__ import annotations

import grpc
import httpx
import numpy as np
import pytest
import torch

from rankboard.protos import ingest_pb2, ingest_pb2_grpc, metric_pb2, parse_text
from rankboard.protos.wire import encode_batch
from rankboard.service.state.batch import RunKey, decode_batch, encode_array
from rankboard.service.state.run import Run
from tests.helpers import make_batch

MULTI = [
    parse_text("multiclass_auc { thresholds: 0 }", metric_pb2.MetricConfig()),
    parse_text("accuracy {}", metric_pb2.MetricConfig()),
]


def multiclass_batch(seq: int, classes: int, n: int = 6, segments=None) -> ingest_pb2.Batch:
    rng = np.random.default_rng(seq)
    probs = rng.dirichlet(np.ones(classes), n).astype(np.float32)
    labels = (np.arange(n) % classes).astype(np.float32)
    return encode_batch(
        producer_id="p",
        sequence=seq,
        experiment="exp",
        arm="control",
        task="cls",
        phase="eval",
        step=1,
        predictions=probs.reshape(-1),
        labels=labels,
        num_classes=classes,
        metrics=MULTI,
        segments=segments or (),
    )


def everything(http: httpx.Client) -> dict:
    """The REST state of experiment ``exp`` that a refusal must leave byte-identical."""
    out = {"exp": http.get("/v1/experiments/exp").json()}
    for run in out["exp"]["runs"]:
        for step in run["steps"]:
            r = http.get(
                f"/v1/experiments/exp/arms/{run['arm']}/metrics",
                params={"task": run["task"], "phase": run["phase"], "step": step, "fresh": True},
            )
            body = r.json()
            body.pop("computed_at")
            body.pop("stale")
            out[(run["task"], step)] = body
    for v in out.values():
        if isinstance(v, dict):
            v.pop("updated_at", None)
            for run in v.get("runs", []):
                run.pop("updated_at", None)
            for e in v.get("experiments", []):
                e.pop("updated_at", None)
    return out


def test_class_count_change_is_refused_whole_and_stays_refused(service_factory, tmp_path):
    svc = service_factory()
    with grpc.insecure_channel(svc.grpc_target) as ch, httpx.Client(base_url=svc.http_url) as h:
        stub = ingest_pb2_grpc.IngestStub(ch)
        assert stub.Send(multiclass_batch(1, classes=3)).error_code == 0
        before = everything(h)
        # 4 classes into step 1 (3 classes): refused as bad input, nothing applied
        ack = stub.Send(multiclass_batch(2, classes=4))
        assert ack.error_code == grpc.StatusCode.INVALID_ARGUMENT.value[0], ack
        assert "classes" in ack.error_message
        # two segments: step 1 (refused part) and a new step 2: no step 2 appears
        ack = stub.Send(multiclass_batch(3, classes=4, segments=[(1, 3), (2, 3)]))
        assert ack.error_code == grpc.StatusCode.INVALID_ARGUMENT.value[0], ack
        # the retry of a refused batch is refused again, not applied
        ack = stub.Send(multiclass_batch(2, classes=4))
        assert ack.error_code == grpc.StatusCode.INVALID_ARGUMENT.value[0], ack
        assert everything(h) == before
        assert before["exp"]["runs"][0]["steps"] == [1]
    svc.stop()
    again = service_factory(tmp_path / "data")  # replay must not meet the refusals either
    with httpx.Client(base_url=again.http_url) as h:
        assert everything(h) == before


@pytest.mark.parametrize(
    ("field", "value", "words"),
    [
        ("labels", np.array([0.0, 1e39], np.float64), "float32"),
        ("predictions", np.array([0.5, -1e39], np.float64), "float32"),
        ("weights", np.array([1.0, 1e39], np.float64), "float32"),
    ],
)
def test_values_beyond_float32_are_refused(stub, http, field, value, words):
    good = make_batch(preds=[0.2, 0.8], labels=[0, 1], seq=1)
    assert stub.Send(good).error_code == 0
    before = http.get(
        "/v1/experiments/exp/arms/control/metrics", params={"task": "ctr", "fresh": True}
    ).json()
    bad = make_batch(preds=[0.2, 0.8], labels=[0, 1], seq=2)
    getattr(bad, field).CopyFrom(encode_array(value))
    ack = stub.Send(bad)
    assert ack.error_code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert words in ack.error_message and field in ack.error_message
    after = http.get(
        "/v1/experiments/exp/arms/control/metrics", params={"task": "ctr", "fresh": True}
    ).json()
    assert after["metrics"] == before["metrics"] and after["samples"] == 2


@pytest.mark.parametrize("name", ["exp\n", "exp\r\n", "\nexp", "ex p"])
def test_names_must_match_whole(stub, name):
    ack = stub.Send(make_batch(preds=[0.2], labels=[1], experiment=name, arm="a"))
    assert ack.error_code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert "experiment" in ack.error_message


def test_apply_failure_rolls_the_run_back():
    """The second line of defence: an update that fails after others succeeded leaves the
    run exactly as it was (windows, counters, columns)."""
    msg = multiclass_batch(1, classes=3)
    run = Run.create(decode_batch(msg), torch.device("cpu"))
    run.apply(decode_batch(msg))
    before = (run.samples, run.version, sorted(run.windows), run.windows[1].columns.samples)
    state = {k: m.state_dict() for k, m in run.windows[1].metrics.items()}

    class Boom(RuntimeError):
        pass

    second = run.windows[1].metrics["accuracy"]

    def fail(*args, **kwargs):
        raise Boom("disk on fire")

    second.update = fail  # the first metric (multiclass_auc) is updated before this fails
    msg2 = multiclass_batch(2, classes=3, segments=[(1, 3), (2, 3)])
    with pytest.raises(Boom):
        run.apply(decode_batch(msg2))
    assert (
        run.samples,
        run.version,
        sorted(run.windows),
        run.windows[1].columns.samples,
    ) == before
    for k, m in run.windows[1].metrics.items():
        for name, value in m.state_dict().items():
            old = state[k][name]
            if isinstance(value, list):
                assert len(value) == len(old) and all(
                    torch.equal(a, b) for a, b in zip(value, old, strict=True)
                )
            else:
                assert torch.equal(value, old)
    assert RunKey("exp", "control", "cls", "eval") == run.key


def test_metric_hash_does_not_walk_retained_state():
    """Undo points and checkpoints walk metrics with ``named_modules``, which hashes each
    module; torchmetrics' hash visits every retained chunk, which made ingestion slow down as
    a run grew (benchmarks/README.md, "Ingest cost with run size"). The hash is identity."""
    from rankboard.service.metrics import AUC

    m = AUC(thresholds=0)
    for _ in range(3):
        m.update(torch.rand(4), torch.tensor([0, 1, 0, 1]))
    assert hash(m) == object.__hash__(m)


def test_a_new_run_whose_apply_fails_leaves_no_trace(tmp_path, monkeypatch):
    """Second line of defence at the store: an update that fails after the checks (a fault
    injected into one metric) registers no run, logs nothing and records no sequence."""
    from rankboard.service.metrics.entropy import NormalizedEntropy
    from rankboard.service.state.store import MetricStore, StoreConfig

    store = MetricStore(StoreConfig(data_dir=tmp_path / "d"))
    msg = make_batch(preds=[0.2, 0.8], labels=[0, 1], producer="p", arm="a")

    def fail(self, b):
        raise RuntimeError("injected fault")

    with monkeypatch.context() as m:
        m.setattr(NormalizedEntropy, "_update_batch", fail)
        with pytest.raises(RuntimeError, match="injected"):
            store.ingest(msg)
    assert store.runs() == [] and store.registry.runs() == []
    assert store.ingest(msg).samples == 2  # not a duplicate: the sequence was not recorded
    store.close()
