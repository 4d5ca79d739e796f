"""GET /metrics on a real service: the exposition parses, metric values equal the REST
values, operation counters count what was sent, the token guards it, the cap holds."""

from __future__ import annotations

import queue
import time

import grpc
import httpx
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from rankboard.protos import ingest_pb2_grpc
from rankboard.service.rest.prometheus import StoreCollector, exposition
from rankboard.service.state.store import MetricStore, StoreConfig
from tests.helpers import make_batch


def scrape(http: httpx.Client, **kw) -> dict[str, list]:
    """family name -> samples, parsed by prometheus_client's own parser."""
    r = http.get("/metrics", **kw)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain")
    out: dict[str, list] = {}
    for fam in text_string_to_metric_families(r.text):
        out.setdefault(fam.name, []).extend(fam.samples)
    return out


def value(fams: dict, name: str, **labels: str) -> float:
    """Sum of the samples called ``name`` whose labels include ``labels``."""
    total = 0.0
    for samples in fams.values():
        for s in samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                total += s.value
    return total


def _batches(arms=("control", "treatment"), steps=(1, 2), n=300, seed=1):
    rng = np.random.default_rng(seed)
    for arm in arms:
        for step in steps:
            y = rng.integers(0, 2, n).astype(np.float32)
            p = np.clip(0.3 + 0.3 * y + rng.normal(0, 0.2, n), 0, 1)
            yield make_batch(preds=p, labels=y, producer=arm, seq=step, arm=arm, step=step)


def test_exposition_values_and_counters(service, http) -> None:
    before = scrape(http)
    sent = list(_batches())
    with grpc.insecure_channel(service.grpc_target) as channel:
        stub = ingest_pb2_grpc.IngestStub(channel)
        for msg in sent:
            assert not stub.Send(msg, timeout=30).error_code
        assert stub.Send(sent[0], timeout=30).duplicate
        bad = make_batch(preds=[0.1, 0.2], labels=[1.0], producer="bad", seq=1)
        assert stub.Send(bad, timeout=30).error_code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    http.get("/v1/experiments/exp", params={"fresh": "true"})
    after = scrape(http)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    n_samples = sum(len(np.frombuffer(m.labels.data, np.float32)) for m in sent)
    assert delta("rankboard_ingest_batches_total", outcome="applied") == len(sent)
    assert delta("rankboard_ingest_batches_total", outcome="duplicate") == 1
    assert delta("rankboard_ingest_batches_total", outcome="rejected", code="INVALID_ARGUMENT") == 1
    assert delta("rankboard_ingest_samples_total", outcome="applied") == n_samples
    assert delta("rankboard_ack_latency_seconds_count") == len(sent)
    assert delta("rankboard_wal_appended_bytes_total") >= sum(m.ByteSize() for m in sent)
    assert delta("rankboard_wal_fsync_seconds_count") >= 1
    assert value(after, "rankboard_state_bytes", store="wal") > 0
    assert value(after, "rankboard_producers") == 2
    assert value(after, "rankboard_runs", phase="eval") == 2
    # REST requests are labelled by route template, never by raw path
    routes = {s.labels["route"] for s in after["rankboard_rest_request_seconds"]}
    assert "/v1/experiments/{experiment}" in routes
    assert not any(r.startswith("/v1/experiments/exp") for r in routes)  # no raw paths

    # metric values equal what REST serves for the same run
    for arm in ("control", "treatment"):
        rest = http.get(
            f"/v1/experiments/exp/arms/{arm}/metrics", params={"task": "ctr", "fresh": "true"}
        ).json()
        fams = scrape(http)
        for metric, v in rest["metrics"].items():
            labels = dict(experiment="exp", arm=arm, task="ctr", phase="eval", metric=metric)
            got = [s for s in fams["rankboard_metric_value"] if s.labels == labels]
            assert len(got) == 1 and got[0].value == pytest.approx(v, rel=1e-12), metric
            iv = (rest.get("intervals") or {}).get(metric)
            for side, want in (("low", iv and iv[0]), ("high", iv and iv[1])):
                fam = fams.get(f"rankboard_metric_interval_{side}", [])
                hit = [s for s in fam if s.labels == labels]
                if want is None:
                    assert hit == []
                else:
                    assert len(hit) == 1 and hit[0].value == pytest.approx(want, rel=1e-9)
    assert value(fams, "rankboard_metric_values_left_out_in_scrape") == 0


def test_open_streams_gauge(service, http) -> None:
    msgs = list(_batches(arms=("s",), steps=(1,)))
    with grpc.insecure_channel(service.grpc_target) as channel:
        stub = ingest_pb2_grpc.IngestStub(channel)
        q: queue.Queue = queue.Queue()

        def requests():
            yield msgs[0]
            q.get()  # keep the stream open until told

        call = stub.Stream(requests(), timeout=60)
        ack = next(call)
        assert not ack.error_code
        assert value(scrape(http), "rankboard_grpc_open_streams") == 1
        q.put(None)
        assert list(call) == []
    deadline = time.monotonic() + 10
    while value(scrape(http), "rankboard_grpc_open_streams") != 0:
        assert time.monotonic() < deadline, "the stream never counted as closed"
        time.sleep(0.05)


def test_metrics_token_and_public_flag(service_factory) -> None:
    guarded = service_factory(read_token="rt")
    public = service_factory(read_token="rt", metrics_public=True)
    with httpx.Client(base_url=guarded.http_url, timeout=30) as http:
        assert http.get("/metrics").status_code == 401
        assert http.get("/metrics", headers={"Authorization": "Bearer nope"}).status_code == 401
        assert http.get("/metrics", headers={"Authorization": "Bearer rt"}).status_code == 200
    with httpx.Client(base_url=public.http_url, timeout=30) as http:
        assert http.get("/metrics").status_code == 200
        assert http.get("/v1/experiments").status_code == 401  # only /metrics is opened


def _series(text: str) -> set[tuple[str, tuple]]:
    names = (
        "rankboard_metric_value",
        "rankboard_metric_interval_low",
        "rankboard_metric_interval_high",
    )
    return {
        (s.name, tuple(sorted(s.labels.items())))
        for f in text_string_to_metric_families(text)
        if f.name in names
        for s in f.samples
    }


def values(series: set[tuple[str, tuple]]) -> int:
    """Metric values among ``series`` (each value goes with its interval bounds)."""
    return sum(1 for name, _ in series if name == "rankboard_metric_value")


def _gauges(text: str) -> dict[str, float]:
    return {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples}


def test_series_cap_holds_with_hundreds_of_runs(tmp_path) -> None:
    """600 runs (thousands of series), cap 1,000: at most the cap is exposed (a metric's
    value and its interval bounds go together), the rest is counted as left out, scrape
    after scrape.

    (10,000 runs: benchmarks/bench_dashboard.py, the same check at full size.)
    """
    store = MetricStore(StoreConfig(data_dir=tmp_path / "d", fsync="none"))
    try:
        p = np.array([0.2, 0.7, 0.4, 0.9], np.float32)
        y = np.array([0, 1, 0, 1], np.float32)
        for i in range(600):
            store.ingest(make_batch(preds=p, labels=y, producer="p", seq=i + 1, arm=f"a{i:05d}"))
        everything = _series(exposition(StoreCollector(store, max_series=10**9)).decode())
        total = len(everything)
        assert total > 2000
        cap = 1000
        per_metric = max(1, total // sum(len(r.metric_keys) for r in store.runs()))
        collector = StoreCollector(store, max_series=cap)
        for scrape_no in (1, 2):
            text = exposition(collector).decode()
            shown = _series(text)
            assert shown <= everything
            assert cap - per_metric < len(shown) <= cap
            gauges = _gauges(text)
            assert gauges["rankboard_metric_series"] == len(shown)
            left_out = values(everything) - values(shown)
            assert left_out > 0
            assert gauges["rankboard_metric_values_left_out_in_scrape"] == left_out
            assert gauges["rankboard_metric_values_left_out_total"] == scrape_no * left_out
    finally:
        store.close()


def test_cap_prefers_recent_runs(tmp_path) -> None:
    store = MetricStore(StoreConfig(data_dir=tmp_path / "d", fsync="none"))
    try:
        p = np.array([0.2, 0.7, 0.4, 0.9], np.float32)
        y = np.array([0, 1, 0, 1], np.float32)
        for i, arm in enumerate(("old", "new")):
            store.ingest(make_batch(preds=p, labels=y, producer=arm, seq=1, arm=arm))
            if i == 0:
                time.sleep(0.01)  # updated_at must differ
        everything = _series(exposition(StoreCollector(store, max_series=10**9)).decode())
        per_run = sum(1 for _, labels in everything if ("arm", "new") in labels)
        text = exposition(StoreCollector(store, max_series=per_run)).decode()
        arms = {dict(labels)["arm"] for _, labels in _series(text)}
        assert arms == {"new"}
    finally:
        store.close()
