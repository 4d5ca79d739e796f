"""Issue 11 on a real service: intervals, paired comparisons, step alignment, bad queries.

Reference values are computed here, independently of the service: sklearn's AUC for the
point values and DeLong's variance written out by definition (O(n1·n0) pair sums) for
the standard errors.
"""

from __future__ import annotations

import grpc
import httpx
import numpy as np
import pytest
from scipy.stats import norm
from sklearn.metrics import roc_auc_score

from rankboard.protos import ingest_pb2, ingest_pb2_grpc
from rankboard.service.state.batch import encode_array

N = 600


def batch(arm: str, seq: int, preds, labels, *, step=1, ids=None, users=None, producer=None):
    msg = ingest_pb2.Batch(
        producer_id=producer or arm,
        sequence=seq,
        experiment="exp",
        arm=arm,
        task="ctr",
        phase=ingest_pb2.PHASE_EVAL,
        step=step,
        predictions=encode_array(np.asarray(preds, np.float32)),
        labels=encode_array(np.asarray(labels, np.float32)),
    )
    if ids is not None:
        msg.sample_ids.CopyFrom(encode_array(np.asarray(ids, np.int64)))
    if users is not None:
        msg.grouping_keys.add(name="user_id", keys=encode_array(np.asarray(users, np.int64)))
    return msg


def delong_by_definition(p: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """AUC and DeLong's variance from the pairwise kernel, O(n1·n0)."""
    pos, neg = p[y == 1].astype(np.float64), p[y == 0].astype(np.float64)
    psi = (pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])
    auc = psi.mean()
    v10, v01 = psi.mean(axis=1), psi.mean(axis=0)
    var = v10.var(ddof=1) / len(pos) + v01.var(ddof=1) / len(neg)
    return float(auc), float(var)


def paired_delong_by_definition(pa, pb, y) -> float:
    """Variance of AUC_b - AUC_a on one eval set, by definition."""

    def placements(p):
        pos, neg = p[y == 1].astype(np.float64), p[y == 0].astype(np.float64)
        psi = (pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])
        return psi.mean(axis=1), psi.mean(axis=0)

    a10, a01 = placements(pa)
    b10, b01 = placements(pb)
    return (b10 - a10).var(ddof=1) / len(a10) + (b01 - a01).var(ddof=1) / len(a01)


@pytest.fixture
def data():
    rng = np.random.default_rng(7)
    y = (rng.random(N) < 0.4).astype(np.float32)
    base = rng.normal(0, 1, N) + 1.0 * y
    pa = 1 / (1 + np.exp(-base))
    pb = 1 / (1 + np.exp(-(base + 0.6 * rng.normal(0, 1, N) + 0.5 * y)))
    pa = np.round(pa, 2).astype(np.float32)  # ties
    pb = np.round(pb, 2).astype(np.float32)
    users = rng.integers(0, 60, N)
    return y, pa, pb, users


def test_metrics_have_delong_intervals(stub, http, data):
    y, pa, _, _ = data
    assert stub.Send(batch("control", 1, pa, y, users=None)).error_code == 0
    r = http.get(
        "/v1/experiments/exp/arms/control/metrics",
        params={"task": "ctr", "fresh": True, "alpha": 0.1},
    )
    assert r.status_code == 200, r.text
    body = r.json()
    auc, var = delong_by_definition(pa, y)
    assert body["metrics"]["auc"] == pytest.approx(roc_auc_score(y, pa), abs=1e-12)
    assert body["standard_errors"]["auc"] == pytest.approx(np.sqrt(var), rel=1e-9)
    z = norm.ppf(0.95)
    lo, hi = body["intervals"]["auc"]
    assert lo == pytest.approx(auc - z * np.sqrt(var), rel=1e-9)
    assert hi == pytest.approx(auc + z * np.sqrt(var), rel=1e-9)
    assert body["methods"]["auc"].startswith("delong")
    assert body["cluster"] is None and body["alpha"] == 0.1
    assert body["positives"] == int(y.sum()) and body["negatives"] == N - int(y.sum())


def test_paired_compare_matches_paired_delong(stub, http, data):
    y, pa, pb, _ = data
    ids = np.arange(N) * 7 + 3
    order = np.random.default_rng(1).permutation(N)  # arms may send in any order
    assert stub.Send(batch("control", 1, pa, y, ids=ids)).error_code == 0
    assert stub.Send(batch("treat", 1, pb[order], y[order], ids=ids[order])).error_code == 0
    r = http.get(
        "/v1/experiments/exp/compare",
        params={"task": "ctr", "baseline": "control", "fresh": True, "cluster": "none"},
    )
    assert r.status_code == 200, r.text
    body = r.json()
    t = body["arms"]["treat"]
    assert t["paired"] is True and t["paired_samples"] == N
    delta = roc_auc_score(y, pb) - roc_auc_score(y, pa)
    assert t["delta"]["auc"] == pytest.approx(delta, abs=1e-12)
    se = np.sqrt(paired_delong_by_definition(pa, pb, y))
    assert t["delta_standard_errors"]["auc"] == pytest.approx(se, rel=1e-9)
    p = 2 * norm.sf(abs(delta) / se)
    assert t["p_values"]["auc"] == pytest.approx(p, rel=1e-6)
    expected = "inconclusive" if p > 0.05 else ("better" if delta > 0 else "worse")
    assert t["verdicts"]["auc"] == expected
    lo, hi = t["delta_intervals"]["auc"]
    assert lo == pytest.approx(delta - norm.ppf(0.975) * se, rel=1e-9)
    assert hi == pytest.approx(delta + norm.ppf(0.975) * se, rel=1e-9)
    base = body["arms"]["control"]
    assert base["delta_intervals"]["auc"] is None and base["p_values"]["auc"] is None
    assert base["verdicts"]["auc"] is None
    # NE is lower-is-better: a verdict by its own direction
    assert t["verdicts"]["normalized_entropy"] in ("better", "worse", "inconclusive")
    assert body["step"] == 1 and body["note"] is None


def test_unpaired_when_ids_differ_and_says_why(stub, http, data):
    y, pa, pb, _ = data
    ids = np.arange(N)
    other = ids.copy()
    other[: N // 10] += 10_000  # 10 % of ids have no partner
    assert stub.Send(batch("control", 1, pa, y, ids=ids)).error_code == 0
    assert stub.Send(batch("treat", 1, pb, y, ids=other)).error_code == 0
    body = http.get(
        "/v1/experiments/exp/compare",
        params={"task": "ctr", "baseline": "control", "fresh": True},
    ).json()
    t = body["arms"]["treat"]
    assert t["paired"] is False and "unpaired" in t["pairing"]
    _, va = delong_by_definition(pa, y)
    _, vb = delong_by_definition(pb, y)
    assert t["delta_standard_errors"]["auc"] == pytest.approx(np.sqrt(va + vb), rel=1e-9)


def test_cluster_defaults_to_the_only_key_column(stub, http, data):
    y, pa, _, users = data
    assert stub.Send(batch("control", 1, pa, y, users=users)).error_code == 0
    body = http.get(
        "/v1/experiments/exp/arms/control/metrics", params={"task": "ctr", "fresh": True}
    ).json()
    assert body["cluster"] == "user_id"
    assert "cluster" in body["methods"]["auc"] or "obuchowski" in body["methods"]["auc"]
    forced = http.get(
        "/v1/experiments/exp/arms/control/metrics",
        params={"task": "ctr", "fresh": True, "cluster": "none"},
    ).json()
    assert forced["cluster"] is None
    _, var = delong_by_definition(pa, y)
    assert forced["standard_errors"]["auc"] == pytest.approx(np.sqrt(var), rel=1e-9)
    assert body["groups"]["grouped_auc"] > 0
    assert body["intervals"]["grouped_auc"] is not None


def test_compare_never_mixes_steps(stub, http, data):
    y, pa, pb, _ = data
    assert stub.Send(batch("control", 1, pa, y, step=1000)).error_code == 0
    assert stub.Send(batch("treat", 1, pb, y, step=1000)).error_code == 0
    assert stub.Send(batch("control", 2, pb, y, step=2000)).error_code == 0
    body = http.get(
        "/v1/experiments/exp/compare",
        params={"task": "ctr", "baseline": "control", "fresh": True},
    ).json()
    assert body["step"] == 1000
    assert "2000" in body["note"] and "control" in body["note"]
    assert {a["step"] for a in body["arms"].values()} == {1000}
    assert body["arms"]["control"]["metrics"]["auc"] == pytest.approx(roc_auc_score(y, pa))
    r = http.get(
        "/v1/experiments/exp/compare",
        params={"task": "ctr", "baseline": "control", "step": 2000},
    )
    assert r.status_code == 404
    assert "treat" in r.json()["detail"] and "1000" in r.json()["detail"]


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"alpha": 0.7}, "alpha"),
        ({"alpha": 0}, "alpha"),
        ({"cluster": "nope"}, "cluster"),
        ({"sequential": True, "horizon": 0}, "horizon"),
    ],
)
def test_bad_queries_are_422_naming_the_field(stub, http, data, params, field):
    y, pa, _, _ = data
    assert stub.Send(batch("control", 1, pa, y)).error_code == 0
    for path, extra in (
        ("/v1/experiments/exp/arms/control/metrics", {}),
        ("/v1/experiments/exp/compare", {"baseline": "control"}),
    ):
        r = http.get(path, params={"task": "ctr", **extra, **params})
        assert r.status_code == 422, r.text
        assert field in r.text


@pytest.mark.parametrize(
    ("ids", "words"),
    [
        (encode_array(np.arange(3, dtype=np.int64)), "sample_ids"),
        (encode_array(np.arange(4, dtype=np.float32)), "sample_ids"),
    ],
)
def test_bad_sample_ids_are_refused(stub, http, ids, words):
    msg = batch("control", 1, [0.1, 0.2, 0.3, 0.4], [0, 1, 0, 1])
    msg.sample_ids.CopyFrom(ids)
    ack = stub.Send(msg)
    assert ack.error_code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert words in ack.error_message
    assert http.get("/v1/experiments").json()["experiments"] == []


def test_sample_ids_survive_restart(service_factory, tmp_path, data):
    y, pa, pb, _ = data
    ids = np.arange(N)
    svc = service_factory()
    with grpc.insecure_channel(svc.grpc_target) as ch:
        stub = ingest_pb2_grpc.IngestStub(ch)
        assert stub.Send(batch("control", 1, pa[:300], y[:300], ids=ids[:300])).error_code == 0
        svc.store.checkpoint()  # half in the checkpoint, half in the log
        assert stub.Send(batch("control", 2, pa[300:], y[300:], ids=ids[300:])).error_code == 0
        assert stub.Send(batch("treat", 1, pb, y, ids=ids)).error_code == 0
    svc.stop()
    again = service_factory(tmp_path / "data")
    with httpx.Client(base_url=again.http_url) as h:
        t = h.get(
            "/v1/experiments/exp/compare",
            params={"task": "ctr", "baseline": "control", "fresh": True, "cluster": "none"},
        ).json()["arms"]["treat"]
    assert t["paired"] is True and t["paired_samples"] == N
    se = np.sqrt(paired_delong_by_definition(pa, pb, y))
    assert t["delta_standard_errors"]["auc"] == pytest.approx(se, rel=1e-9)


def test_history_has_intervals_and_get_never_writes(stub, http, data, service):
    y, pa, _, _ = data
    for i, step in enumerate((10, 20, 30)):
        assert stub.Send(batch("control", i + 1, pa, y, step=step)).error_code == 0
    registry = service.store.data_dir / "registry.sqlite"
    before = registry.stat().st_mtime_ns
    r = http.get(
        "/v1/experiments/exp/arms/control/history",
        params={"task": "ctr", "metric": "auc"},
    )
    assert r.status_code == 200, r.text
    points = r.json()["points"]
    assert [p["step"] for p in points] == [10, 20, 30]
    auc, var = delong_by_definition(pa, y)
    for p in points:
        assert p["value"] == pytest.approx(auc)
        assert p["low"] == pytest.approx(auc - norm.ppf(0.975) * np.sqrt(var), rel=1e-9)
    thin = http.get(
        "/v1/experiments/exp/arms/control/history",
        params={"task": "ctr", "metric": "auc", "max_points": 2},
    ).json()["points"]
    assert [p["step"] for p in thin] == [10, 30]
    assert registry.stat().st_mtime_ns == before


def test_sequential_intervals_are_wider_and_p_values_larger(stub, http, data):
    y, pa, pb, _ = data
    ids = np.arange(N)
    assert stub.Send(batch("control", 1, pa, y, ids=ids)).error_code == 0
    assert stub.Send(batch("treat", 1, pb, y, ids=ids)).error_code == 0
    common = {"task": "ctr", "baseline": "control", "fresh": True, "cluster": "none"}
    fixed = http.get("/v1/experiments/exp/compare", params=common).json()
    seq = http.get(
        "/v1/experiments/exp/compare", params={**common, "sequential": True, "horizon": 600}
    ).json()
    assert seq["sequential"] is True and seq["horizon"] == 600
    for name in ("auc", "normalized_entropy"):
        f, s = fixed["arms"]["treat"], seq["arms"]["treat"]
        assert s["delta"][name] == f["delta"][name]
        f_lo, f_hi = f["delta_intervals"][name]
        s_lo, s_hi = s["delta_intervals"][name]
        assert s_lo < f_lo and s_hi > f_hi  # always-valid costs width
        assert s["p_values"][name] >= f["p_values"][name]


def test_stream_sample_ids_pair_two_arms(service, http, data):
    """MetricsStream.log(sample_ids=) end to end: both arms score one eval set."""
    from rankboard.trainer import MetricsStream

    y, pa, pb, _ = data
    ids = np.arange(N) + 1_000_000
    for arm, p in (("control", pa), ("treat", pb)):
        with MetricsStream(service.grpc_target, experiment="exp", arm=arm) as stream:
            for lo in range(0, N, 256):  # several batches, as a trainer would send them
                sl = slice(lo, lo + 256)
                stream.log(p[sl], y[sl], task="ctr", phase="eval", step=3, sample_ids=ids[sl])
            stream.flush()
    t = http.get(
        "/v1/experiments/exp/compare",
        params={"task": "ctr", "baseline": "control", "fresh": True},
    ).json()["arms"]["treat"]
    assert t["paired"] is True and t["paired_samples"] == N
    se = np.sqrt(paired_delong_by_definition(pa, pb, y))
    assert t["delta_standard_errors"]["auc"] == pytest.approx(se, rel=1e-9)


def test_wrong_case_task_lists_the_tasks(stub, http, data):
    y, pa, _, _ = data
    assert stub.Send(batch("control", 1, pa, y)).error_code == 0
    r = http.get("/v1/experiments/exp/arms/control/metrics", params={"task": "CTR"})
    assert r.status_code == 404
    assert "ctr" in r.json()["detail"] and "case-sensitive" in r.json()["detail"]
    r = http.get("/v1/experiments/exp/arms/Control/metrics", params={"task": "ctr"})
    assert r.status_code == 404 and "'control'" in r.json()["detail"]
