"""The interface the service relies on: validation, persistence, merging, builders."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch
from sklearn.metrics import mean_absolute_error, roc_auc_score

from rankboard.protos import metric_pb2 as pb
from rankboard.service.metrics import (
    AUC,
    XAUC,
    Accuracy,
    DecayAUC,
    GroupedAUC,
    GroupedXAUC,
    MeanAbsoluteError,
    MeanSquaredError,
    MulticlassAUC,
    NormalizedEntropy,
    RecallAtK,
    TrainMetricWrapper,
    create_metric,
    create_metrics,
    create_train_metric,
    create_train_metrics,
    metric_key,
)

ALL_CONFIGS = [
    pb.MetricConfig(auc=pb.AUC()),
    pb.MetricConfig(auc=pb.AUC(thresholds=0)),
    pb.MetricConfig(multiclass_auc=pb.MulticlassAUC()),
    pb.MetricConfig(multiclass_auc=pb.MulticlassAUC(thresholds=0, average="weighted")),
    pb.MetricConfig(recall_at_k=pb.RecallAtK(top_k=2)),
    pb.MetricConfig(mean_absolute_error=pb.MeanAbsoluteError()),
    pb.MetricConfig(mean_squared_error=pb.MeanSquaredError()),
    pb.MetricConfig(accuracy=pb.Accuracy()),
    pb.MetricConfig(grouped_auc=pb.GroupedAUC(grouping_key="user")),
    pb.MetricConfig(xauc=pb.XAUC()),
    pb.MetricConfig(xauc=pb.XAUC(sample_ratio=0.3, seed=11)),
    pb.MetricConfig(xauc=pb.XAUC(in_batch=True)),
    pb.MetricConfig(grouped_xauc=pb.GroupedXAUC(grouping_key="user")),
    pb.MetricConfig(
        grouped_xauc=pb.GroupedXAUC(grouping_key="user", max_pairs_per_group=5, seed=3)
    ),
    pb.MetricConfig(normalized_entropy=pb.NormalizedEntropy()),
    pb.MetricConfig(auc=pb.AUC(bins=50)),
    pb.MetricConfig(multiclass_auc=pb.MulticlassAUC(bins=20)),
    pb.MetricConfig(relative_l1=pb.RelativeL1()),
    pb.MetricConfig(unique_ratio=pb.UniqueRatio()),
    pb.MetricConfig(root_mean_squared_error=pb.RootMeanSquaredError()),
    pb.MetricConfig(r_squared=pb.RSquared()),
    pb.MetricConfig(log_loss=pb.LogLoss()),
    pb.MetricConfig(calibration=pb.Calibration()),
    pb.MetricConfig(auprc=pb.AUPRC()),
    pb.MetricConfig(recall_session=pb.RecallSession(grouping_key="user", rank_labels=True)),
    pb.MetricConfig(auc=pb.AUC(thresholds=0), window_size=100_000),
    pb.MetricConfig(normalized_entropy=pb.NormalizedEntropy(), window_size=100_000),
    pb.MetricConfig(grouped_auc=pb.GroupedAUC(grouping_key="user"), window_size=100_000),
]


def _sampled(m) -> bool:
    return getattr(m, "sampler", None) is not None


def _batch(metric, rng: np.random.Generator, n: int = 64) -> dict:
    """A valid random batch for ``metric``, passing only what it supports."""
    if metric.label_kind == "multiclass":
        scores = rng.random((n, 3)).astype(np.float32)
        preds = torch.from_numpy(scores / scores.sum(1, keepdims=True))
        target = torch.from_numpy(rng.integers(0, 3, n))
    elif metric.label_kind == "real":
        preds = torch.from_numpy(rng.random(n).astype(np.float32))
        target = torch.from_numpy(rng.integers(0, 5, n).astype(np.float32))
    else:
        preds = torch.from_numpy(np.round(rng.random(n), 2).astype(np.float32))
        target = torch.from_numpy((rng.random(n) < 0.4).astype(np.float32))
    kw = {}
    if metric.supports_weights:
        kw["weights"] = torch.from_numpy(rng.random(n).astype(np.float32))
    if metric.needs_grouping_key:
        kw["grouping_key"] = torch.from_numpy(rng.integers(0, 6, n))
    return {"preds": preds, "target": target, **kw}


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    return bool(torch.equal(a, b)) or (math.isnan(a.item()) and math.isnan(b.item()))


def _roundtrip(sd: dict) -> dict:
    buf = io.BytesIO()
    torch.save(sd, buf)
    buf.seek(0)
    return torch.load(buf)


@pytest.mark.parametrize("cfg", ALL_CONFIGS, ids=lambda c: str(c).replace("\n", " "))
def test_save_load_merge_and_repeatable_compute(cfg, rng):
    m = create_metric(cfg)
    for _ in range(3):
        m.update(**_batch(m, rng))
    first = m.compute()
    assert first.dim() == 0 and first.is_floating_point()
    if not _sampled(m):  # a sampled metric draws new pairs at every compute (seeded once)
        assert _same(first, m.compute())  # compute leaves the state alone

    fresh = create_metric(cfg)
    fresh.load_state_dict(_roundtrip(m.state_dict()))
    assert _same(fresh.compute(), first)
    more = _batch(m, rng)
    m.update(**more)
    fresh.update(**more)
    assert _same(fresh.compute(), m.compute())

    # merging two halves equals one metric fed everything
    a, b, whole = create_metric(cfg), create_metric(cfg), create_metric(cfg)
    batches = [_batch(m, rng) for _ in range(4)]
    for i, batch in enumerate(batches):
        (a if i % 2 else b).update(**batch)
        whole.update(**batch)
    if isinstance(whole, XAUC) and whole.in_batch:
        b.merge_state(a)
        assert b.compute().item() == pytest.approx(whole.compute().item(), abs=1e-12)
        return
    b.merge_state(a)
    if _sampled(whole):
        return  # sampled pairs depend on sample order
    # same samples, possibly in another order: order-free metrics agree
    assert b.compute().item() == pytest.approx(whole.compute().item(), abs=1e-9, nan_ok=True)


@pytest.mark.parametrize("cfg", ALL_CONFIGS[:1] + ALL_CONFIGS[4:9] + ALL_CONFIGS[12:13])
def test_train_wrapper_roundtrip(cfg, rng):
    tcfg = pb.TrainMetricConfig(decay_step=2, decay_rate=0.5)
    getattr(tcfg, metric_key(cfg)).CopyFrom(getattr(cfg, metric_key(cfg)))
    w = create_train_metric(tcfg)
    assert math.isnan(w.compute().item())
    flags = []
    for _ in range(5):
        assert w.update(**_batch(w, rng)) is None  # torchmetrics' contract
        flags.append(w.refreshed)
    assert flags == [False, True, False, True, False] and w.num_updates == 5
    fresh = create_train_metric(tcfg)
    fresh.load_state_dict(_roundtrip(w.state_dict()))
    assert _same(fresh.compute(), w.compute()) and fresh.num_updates == 5
    batch = _batch(w, rng)
    fresh.update(**batch)
    w.update(**batch)
    assert fresh.refreshed and w.refreshed
    assert _same(fresh.compute(), w.compute())


def _equal_states(a: dict, b: dict) -> bool:
    if sorted(a) != sorted(b):
        return False
    for k in a:
        x, y = a[k], b[k]
        if isinstance(x, list):
            x, y = (torch.cat(x) if x else torch.empty(0)), (torch.cat(y) if y else torch.empty(0))
        if not torch.equal(x, y) and not (x.isnan().all() and y.isnan().all()):
            return False
    return True


@pytest.mark.parametrize("wrapped", [False, True])
@pytest.mark.parametrize("cfg", ALL_CONFIGS, ids=lambda c: str(c).replace("\n", " "))
def test_state_snapshot_is_state_dict_and_frozen(cfg, wrapped, rng):
    if wrapped:
        tcfg = pb.TrainMetricConfig(decay_step=2)
        getattr(tcfg, metric_key(cfg)).CopyFrom(getattr(cfg, metric_key(cfg)))
        if cfg.HasField("auc") and cfg.auc.thresholds == 0:
            with pytest.raises(ValueError, match="DecayAUC needs binned thresholds"):
                create_train_metric(tcfg)
            return
        m = create_train_metric(tcfg)
    else:
        m = create_metric(cfg)
    for _ in range(3):
        m.update(**_batch(m, rng))
    snap = m.state_snapshot()
    assert _equal_states(snap, m.state_dict())
    frozen = _roundtrip(m.state_dict())
    m.update(**_batch(m, rng))  # later updates leave an earlier snapshot as it was
    assert _equal_states(snap, frozen)
    fresh = create_train_metric(tcfg) if wrapped else create_metric(cfg)
    fresh.load_state_dict(_roundtrip(m.state_snapshot()))
    assert _same(fresh.compute(), m.compute())


def test_exact_auc_mixes_weighted_and_unweighted_batches(rng):
    m = AUC(thresholds=0)
    p = rng.random(300).astype(np.float32)
    y = (rng.random(300) < 0.4).astype(np.float32)
    w = rng.random(300).astype(np.float32)
    m.update(torch.from_numpy(p[:100]), torch.from_numpy(y[:100]))
    m.update(
        torch.from_numpy(p[100:200]),
        torch.from_numpy(y[100:200]),
        weights=torch.from_numpy(w[100:200]),
    )
    m.update(torch.from_numpy(p[200:]), torch.from_numpy(y[200:]))
    sw = np.concatenate([np.ones(100), w[100:200], np.ones(100)])
    assert m.compute().item() == pytest.approx(roc_auc_score(y, p, sample_weight=sw), abs=1e-9)
    fresh = AUC(thresholds=0)
    fresh.load_state_dict(_roundtrip(m.state_dict()))
    assert fresh.compute().item() == pytest.approx(m.compute().item(), abs=1e-12)


def test_train_wrapper_smoothing_semantics(rng):
    w = TrainMetricWrapper(MeanAbsoluteError(), decay_rate=0.75, decay_step=2)
    p = rng.random(8).astype(np.float32)
    t = rng.random(8).astype(np.float32)
    windows = []
    for k in range(4):
        for i in (2 * k, 2 * k + 1):
            w.update(torch.from_numpy(p[i : i + 1]), torch.from_numpy(t[i : i + 1]))
        windows.append(mean_absolute_error(t[2 * k : 2 * k + 2], p[2 * k : 2 * k + 2]))
    expected = windows[0]
    for v in windows[1:]:
        expected = 0.75 * expected + 0.25 * v
    assert w.compute().item() == pytest.approx(expected, rel=1e-6)
    w.update(torch.empty(0), torch.empty(0))  # empty: no step
    assert w.num_updates == 8
    w.reset()
    assert w.num_updates == 0 and math.isnan(w.compute().item())


def test_decay_auc_semantics(rng):
    m = DecayAUC(thresholds=10)
    p1, y1 = np.array([0.05, 0.95], np.float32), np.array([0, 1], np.float32)
    p2, y2 = np.array([0.95, 0.05], np.float32), np.array([0, 1], np.float32)
    m.update(torch.from_numpy(p1), torch.from_numpy(y1))
    m.decay(0.9)
    assert m.compute().item() == 1.0
    m.update(torch.from_numpy(p2), torch.from_numpy(y2))
    m.decay(0.9)
    # state = 0.9 * good + 0.1 * bad: weighted sklearn AUC of the union
    p = np.concatenate([p1, p2])
    y = np.concatenate([y1, y2])
    w = np.array([0.9, 0.9, 0.1, 0.1])
    assert m.compute().item() == pytest.approx(roc_auc_score(y, p, sample_weight=w))
    with pytest.raises(ValueError, match="thresholds"):
        DecayAUC(thresholds=0)


BAD = [
    (dict(preds=[0.1, 0.2], target=[0, 1, 1]), "rows"),
    (dict(preds=[0.1, float("nan")], target=[0, 1]), "NaN"),
    (dict(preds=[0.1, float("inf")], target=[0, 1]), "NaN or infinite"),
    (dict(preds=[0.1, 0.2], target=[0, 2]), "0 or 1"),
    (dict(preds=[0.1, 0.2], target=[0, 0.5]), "0 or 1"),
    (dict(preds=[[0.1, 0.2]], target=[0]), "shape"),
    (dict(preds=[0.1, 1.2], target=[0, 1]), r"\[0, 1\]"),
    (dict(preds=[0.1, 0.2], target=[0, 1], weights=[1.0, -1.0]), "weights"),
    (dict(preds=[0.1, 0.2], target=[0, 1], weights=[1.0]), "weights"),
    (dict(preds=[0.1, 0.2], target=[0, 1], grouping_key=[1, 2]), "grouping key"),
]


@pytest.mark.parametrize(("kwargs", "message"), BAD)
def test_bad_input_is_value_error_before_state_changes(kwargs, message):
    m = AUC()
    m.update(torch.tensor([0.3, 0.6]), torch.tensor([0, 1]))
    before = m.hist.clone()
    kw = {k: torch.tensor(v) for k, v in kwargs.items()}
    with pytest.raises(ValueError, match=message):
        m.check_inputs(**kw)
    with pytest.raises(ValueError, match=message):
        m.update(**kw)
    assert torch.equal(m.hist, before)


def test_validation_of_other_metrics():
    g = GroupedAUC(grouping_key="user")
    with pytest.raises(ValueError, match="grouping key"):
        g.update(torch.tensor([0.1]), torch.tensor([1]))
    with pytest.raises(ValueError, match="integer"):
        g.update(torch.tensor([0.1]), torch.tensor([1]), grouping_key=torch.tensor([1.5]))
    with pytest.raises(ValueError, match="weights"):
        g.update(
            torch.tensor([0.1]),
            torch.tensor([1]),
            grouping_key=torch.tensor([1]),
            weights=torch.tensor([-1.0]),
        )
    assert g.preds == [] and g.weights == []
    with pytest.raises(ValueError, match="class ids"):
        MulticlassAUC().update(torch.tensor([[0.5, 0.5]]), torch.tensor([2]))
    mc = MulticlassAUC()
    mc.update(torch.tensor([[0.5, 0.5]]), torch.tensor([1]))
    with pytest.raises(ValueError, match="classes"):
        mc.check_inputs(torch.tensor([[0.2, 0.3, 0.5]]), torch.tensor([1]))
    with pytest.raises(ValueError, match="NaN"):
        XAUC().update(torch.tensor([0.1, 0.2]), torch.tensor([1.0, float("nan")]))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        NormalizedEntropy().update(torch.tensor([2.0]), torch.tensor([1]))
    with pytest.raises(ValueError, match="shape"):
        RecallAtK().update(torch.tensor([0.1, 0.2]), torch.tensor([1, 0]))
    with pytest.raises(ValueError, match="shape"):
        MeanSquaredError().update(torch.tensor(0.5), torch.tensor(0.5))


def test_empty_batches_are_noops():
    for m in (
        AUC(),
        AUC(thresholds=0),
        XAUC(),
        MeanAbsoluteError(),
        Accuracy(),
        NormalizedEntropy(),
    ):
        m.update(torch.empty(0), torch.empty(0))
        assert math.isnan(m.compute().item())
    g = GroupedAUC(grouping_key="u")
    g.update(torch.empty(0), torch.empty(0), grouping_key=torch.empty(0, dtype=torch.int64))
    assert g.preds == []


def test_class_attributes_and_device_move():
    assert AUC.supports_weights and not AUC.needs_grouping_key and AUC.label_kind == "binary"
    assert GroupedXAUC.needs_grouping_key and GroupedXAUC.label_kind == "real"
    assert MulticlassAUC.label_kind == "multiclass" and GroupedAUC.supports_weights
    g = create_metric(pb.MetricConfig(grouped_auc=pb.GroupedAUC(grouping_key="uid")))
    assert g.grouping_key_name == "uid"
    w = create_train_metric(pb.TrainMetricConfig(grouped_auc=pb.GroupedAUC(grouping_key="uid")))
    assert w.grouping_key_name == "uid" and w.needs_grouping_key and w.label_kind == "binary"
    m = AUC().to("cpu")
    assert m.hist.device.type == "cpu"


def test_builders():
    cfgs = [
        pb.MetricConfig(auc=pb.AUC()),
        pb.MetricConfig(grouped_auc=pb.GroupedAUC(grouping_key="u")),
        pb.MetricConfig(auc=pb.AUC(thresholds=0)),
        pb.MetricConfig(auc=pb.AUC()),
    ]
    ms = create_metrics(cfgs)
    assert list(ms) == ["auc", "grouped_auc", "auc_2", "auc_3"]
    assert ms["auc_2"].thresholds == 0 and ms["auc"].thresholds == 200
    tms = create_train_metrics([pb.TrainMetricConfig(auc=pb.AUC())] * 2)
    assert list(tms) == ["auc", "auc_2"] and isinstance(tms["auc"].metric, DecayAUC)
    assert tms["auc"].decay_step == 100
    with pytest.raises(ValueError, match="no metric"):
        create_metric(pb.MetricConfig())
    with pytest.raises(ValueError, match="no metric"):
        create_train_metrics([pb.TrainMetricConfig()])
    x = create_metric(pb.MetricConfig(xauc=pb.XAUC()))
    assert not x.sampling and not x.in_batch
    assert create_metric(pb.MetricConfig(xauc=pb.XAUC(max_pairs=10))).sampling
    gx = create_metric(pb.MetricConfig(grouped_xauc=pb.GroupedXAUC(grouping_key="u")))
    assert gx.max_pairs_per_group is None
    ne = create_metric(pb.MetricConfig(normalized_entropy=pb.NormalizedEntropy(eta=1e-6)))
    assert ne.eta == pytest.approx(1e-6)
    with pytest.raises(ValueError, match="grouping_key"):
        create_metric(pb.MetricConfig(grouped_auc=pb.GroupedAUC(grouping_key="")))


def test_train_wrapper_decay_auc_matches_weighted_reference(rng):
    """State after windows W1, W2, W3 (decay 0.8): W1, then 0.8 W1 + 0.2 W2, then
    0.64 W1 + 0.16 W2 + 0.2 W3: sklearn's weighted AUC of the bin indices."""
    bins, decay = 20, 0.8
    w = TrainMetricWrapper(DecayAUC(bins=bins), decay_rate=decay, decay_step=2)
    windows = []
    for k in range(3):
        batches = []
        for i in range(2):
            p = rng.random(50).astype(np.float32)
            y = (rng.random(50) < p).astype(np.float32)
            batches.append((p, y))
            w.update(torch.from_numpy(p), torch.from_numpy(y))
            assert w.refreshed == (i == 1)
            if k == 0 and i == 0:
                assert math.isnan(w.compute().item())  # nothing decayed yet
        windows.append(tuple(np.concatenate(a) for a in zip(*batches, strict=True)))
        scale = [decay ** (k - j) * (1 - decay if j else 1) for j in range(k + 1)]
        p_all = np.concatenate([windows[j][0] for j in range(k + 1)])
        y_all = np.concatenate([windows[j][1] for j in range(k + 1)])
        sw = np.concatenate([np.full(100, scale[j]) for j in range(k + 1)])
        binned = np.minimum(np.floor(p_all * np.float32(bins)), bins - 1)
        expected = roc_auc_score(y_all, binned, sample_weight=sw)
        assert w.compute().item() == pytest.approx(expected, abs=1e-9)
    # between decay steps the value stays, though the buffer fills
    before = w.compute().item()
    w.update(torch.tensor([0.9, 0.1]), torch.tensor([0, 1]))
    assert w.compute().item() == before


def test_train_wrapper_first_value_and_nan_windows():
    w = TrainMetricWrapper(AUC(thresholds=0), decay_rate=0.5, decay_step=1)
    w.update(torch.tensor([0.2, 0.3]), torch.tensor([1, 1]))  # undefined window: still NaN
    assert math.isnan(w.compute().item())
    w.update(torch.tensor([0.2, 0.3]), torch.tensor([0, 1]))  # first value taken as is
    assert w.compute().item() == 1.0
    w.update(torch.tensor([0.4]), torch.tensor([0]))  # undefined window: value kept
    assert w.compute().item() == 1.0
    w.update(torch.tensor([0.2, 0.3]), torch.tensor([1, 0]))
    assert w.compute().item() == 0.5  # 0.5 * 1 + 0.5 * 0
    assert w.num_updates == 4


def _bad_batches(m) -> list[dict]:
    """Batches ``m`` must refuse: mismatched lengths, NaN preds, bad labels, keys."""
    good = _batch(m, np.random.default_rng(0), n=4)
    bad = [{**good, "target": good["target"][:3]}]
    nan_preds = good["preds"].clone()
    nan_preds[1] = float("nan")
    bad.append({**good, "preds": nan_preds})
    if m.label_kind == "binary":
        bad.append({**good, "target": torch.tensor([0.0, 1.0, 2.0, 1.0])})
    if m.needs_grouping_key:
        bad.append({k: v for k, v in good.items() if k != "grouping_key"})
    else:
        bad.append({**good, "grouping_key": torch.arange(4)})
    if m.supports_weights:
        bad.append({**good, "weights": torch.tensor([1.0, -1.0, 1.0, 1.0])})
    return bad


@pytest.mark.parametrize("wrapped", [False, True])
@pytest.mark.parametrize("cfg", ALL_CONFIGS, ids=lambda c: str(c).replace("\n", " "))
def test_every_metric_refuses_bad_input_before_state_changes(cfg, wrapped, rng):
    if wrapped:
        if cfg.HasField("auc") and cfg.auc.thresholds == 0:
            return
        tcfg = pb.TrainMetricConfig(decay_step=3)
        getattr(tcfg, metric_key(cfg)).CopyFrom(getattr(cfg, metric_key(cfg)))
        m = create_train_metric(tcfg)
    else:
        m = create_metric(cfg)
    for _ in range(2):
        m.update(**_batch(m, rng))
    before = _roundtrip(m.state_dict())
    for bad in _bad_batches(m):
        with pytest.raises(ValueError):
            m.check_inputs(**bad)
        with pytest.raises(ValueError):
            m.update(**bad)
        assert _equal_states(m.state_dict(), before)
    if wrapped:
        assert m.num_updates == 2
