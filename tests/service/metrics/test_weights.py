"""Per-sample weights on GroupedAUC, XAUC, GroupedXAUC, Accuracy and RecallAtK (issue 14
item 5), against torchrec's test values (github.com/pytorch/torchrec at
a48cef79ebc333da92af1311c04b041ee21a8e75, carried over as data) and weighted definitions
written out here by brute force; and states saved before weights load unchanged.
"""

from __future__ import annotations

import io
import itertools
import math

import numpy as np
import pytest
import torch

from rankboard.service.metrics import (
    XAUC,
    Accuracy,
    GroupedAUC,
    GroupedXAUC,
    RecallAtK,
)

T = torch.from_numpy


def _brute_weighted_auc(p, y, w):
    w = np.asarray(w, dtype=np.float64)
    num = den = 0.0
    for i, j in itertools.product(range(len(p)), repeat=2):
        if y[i] == 1 and y[j] == 0:
            pair = w[i] * w[j]
            den += pair
            num += pair * (1.0 if p[i] > p[j] else 0.5 if p[i] == p[j] else 0.0)
    return num / den if den > 0 else math.nan


def _brute_weighted_xauc(p, t, w):
    w = np.asarray(w, dtype=np.float64)
    num = den = 0.0
    for i, j in itertools.combinations(range(len(p)), 2):
        pair = w[i] * w[j]
        den += pair
        num += pair * float((p[i] - p[j]) * (t[i] - t[j]) > 0)
    return num / den if den > 0 else math.nan


# --- GroupedAUC ----------------------------------------------------------------------------
def test_grouped_auc_weighted_torchrec_values():
    """torchrec/metrics/tests/test_auc.py generate_model_outputs_cases (grouping_keys):
    'random_inputs' 0.2419 and 'one_group' 0.4464 (weighted, groups count equally)."""
    labels = torch.tensor([1, 0, 0, 1, 1])
    preds = torch.tensor([0.2, 0.6, 0.8, 0.4, 0.9])
    weights = torch.tensor([0.13, 0.2, 0.5, 0.8, 0.75])
    for keys, expected in (([0, 1, 0, 1, 1], 0.2419), ([1, 1, 1, 1, 1], 0.4464)):
        m = GroupedAUC(grouping_key="g")
        m.update(preds, labels, weights=weights, grouping_key=torch.tensor(keys))
        assert m.compute().item() == pytest.approx(expected, abs=1e-4)


def test_grouped_auc_torchrec_gauc_hard_and_constant_groups():
    """torchrec/metrics/tests/test_gauc.py::test_calc_gauc_hard: sessions of 2, 3, 3, 2;
    torchrec skips the all-equal-prediction session [0.5, 0.5]: 0.25 over 2 groups
    (``skip_constant_groups``). rankboard's default (tzrec's) counts it as 0.5: 1/3 over 3."""
    p = torch.tensor([0.3, 0.9, 0.1, 0.8, 0.2, 0.8, 0.7, 0.6, 0.5, 0.5])
    y = torch.tensor([1, 1, 1, 0, 0, 1, 0, 1, 1, 0])
    g = torch.repeat_interleave(torch.arange(4), torch.tensor([2, 3, 3, 2]))
    skip = GroupedAUC(grouping_key="s", skip_constant_groups=True)
    skip.update(p, y, grouping_key=g)
    v, c = skip.compute_with_count()
    assert (v.item(), c.item()) == (pytest.approx(0.25), 2)
    default = GroupedAUC(grouping_key="s")
    default.update(p, y, grouping_key=g)
    v, c = default.compute_with_count()
    assert (v.item(), c.item()) == (pytest.approx(1 / 3), 3)


def test_grouped_auc_simple_and_degenerate_torchrec_cases():
    """torchrec/metrics/tests/test_gauc.py: test_calc_gauc_simple (0.75 over 2 sessions);
    all-0 / all-1 labels: torchrec 0.5 with 0 sessions, rankboard NaN with 0 groups."""
    g = torch.tensor([0, 0, 0, 1, 1])
    p = torch.tensor([0.9, 0.8, 0.7, 0.6, 0.5])
    m = GroupedAUC(grouping_key="s")
    m.update(p, torch.tensor([1, 0, 1, 1, 0]), grouping_key=g)
    assert m.compute_with_count()[0].item() == pytest.approx(0.75)
    for label in (0, 1):
        d = GroupedAUC(grouping_key="s")
        d.update(p, torch.full((5,), label), grouping_key=g)
        v, c = d.compute_with_count()
        assert math.isnan(v.item()) and c.item() == 0


@pytest.mark.parametrize("kernel", ["numpy-packed", "numpy-argsort", "torch"])
def test_grouped_auc_weighted_matches_brute_force(rng, kernel, monkeypatch):
    """Weighted GAUC = mean over groups with both classes of the weighted Mann-Whitney
    statistic (ties one half): numpy kernel (packed sort, argsort fallback) and torch
    path; zero weights included."""
    import importlib

    gmod = importlib.import_module("rankboard.service.metrics.functional.grouped_auc")
    kmod = importlib.import_module("rankboard.service.metrics.functional._numpy_kernels")
    monkeypatch.setattr(gmod, "_use_numpy", kernel != "torch")
    if kernel == "numpy-argsort":
        monkeypatch.setattr(kmod, "_PACK_BITS", 0)
    n = 600
    p = np.round(rng.random(n), 1).astype(np.float32)
    y = (rng.random(n) < 0.4).astype(np.int64)
    w = rng.random(n).astype(np.float32)
    w[:50] = 0
    g = rng.integers(0, 40, n)
    m = GroupedAUC(grouping_key="u")
    for part in np.array_split(np.arange(n), 3):
        m.update(T(p[part]), T(y[part]), weights=T(w[part]), grouping_key=T(g[part]))
    vals = []
    for k in np.unique(g):
        s = g == k
        v = _brute_weighted_auc(p[s], y[s], w[s])
        if not math.isnan(v):
            vals.append(v)
    value, count = m.compute_with_count()
    assert count.item() == len(vals)
    assert value.item() == pytest.approx(np.mean(vals), abs=1e-9)


def test_grouped_auc_mixes_weighted_and_unweighted_batches(rng):
    """An unweighted batch counts its samples with weight 1 beside weighted batches."""
    p = rng.random(200).astype(np.float32)
    y = (rng.random(200) < 0.5).astype(np.int64)
    g = rng.integers(0, 5, 200)
    w = rng.random(200).astype(np.float32)
    mixed = GroupedAUC(grouping_key="u")
    mixed.update(T(p[:100]), T(y[:100]), grouping_key=T(g[:100]))
    mixed.update(T(p[100:]), T(y[100:]), weights=T(w[100:]), grouping_key=T(g[100:]))
    full = GroupedAUC(grouping_key="u")
    w_all = np.concatenate([np.ones(100, np.float32), w[100:]])
    full.update(T(p), T(y), weights=T(w_all), grouping_key=T(g))
    assert mixed.compute().item() == pytest.approx(full.compute().item(), abs=1e-12)


def _roundtrip(sd: dict) -> dict:
    buf = io.BytesIO()
    torch.save(sd, buf)
    buf.seek(0)
    return torch.load(buf)


@pytest.mark.parametrize(
    "make",
    [
        lambda: GroupedAUC(grouping_key="u"),
        lambda: GroupedXAUC(grouping_key="u"),
        lambda: XAUC(),
        lambda: Accuracy(),
    ],
    ids=["grouped_auc", "grouped_xauc", "xauc", "accuracy"],
)
def test_state_saved_without_weights_loads(rng, make):
    """Checkpoint compatibility: a state_dict saved before the weights states existed
    (here: the same state with the new entries removed) loads, computes the same value,
    and takes weighted batches afterwards."""
    m = make()
    kw = {"grouping_key": T(rng.integers(0, 4, 50))} if m.needs_grouping_key else {}
    p = T(rng.random(50).astype(np.float32))
    y = T((rng.random(50) < 0.5).astype(np.float32))
    m.update(p, y, **kw)
    sd = m.state_dict()
    for new_key in ("weights", "weighted_correct", "weighted_total"):
        sd.pop(new_key, None)
    fresh = make()
    fresh.load_state_dict(_roundtrip(sd))
    assert fresh.compute().item() == pytest.approx(m.compute().item(), abs=1e-12)
    w = T(rng.random(50).astype(np.float32))
    fresh.update(p, y, weights=w, **kw)
    m.update(p, y, weights=w, **kw)
    assert fresh.compute().item() == pytest.approx(m.compute().item(), abs=1e-12)


# --- XAUC / GroupedXAUC -----------------------------------------------------------------------
def test_xauc_weighted_torchrec_value():
    """torchrec/metrics/tests/test_xauc.py: weights [1, 1, 1, 0, 1] -> 0.6667."""
    m = XAUC()
    m.update(
        torch.tensor([0.1, 0.2, 0.3, 0.4, 0.5]),
        torch.tensor([0.2, 0.1, 0.3, 0.5, 0.25]),
        weights=torch.tensor([1.0, 1.0, 1.0, 0.0, 1.0]),
    )
    assert m.compute().item() == pytest.approx(0.6667, abs=1e-4)


def test_xauc_weighted_matches_brute_force_in_every_mode(rng):
    """Exact: sum over concordant pairs of w_i w_j over the sum over all pairs (ties in
    either disagree); in-batch: mean of the per-batch values; sampled with every pair
    drawn many times: close to exact."""
    n = 300
    p = np.round(rng.random(n), 2).astype(np.float32)
    t = np.round(p + rng.normal(scale=0.3, size=n), 1).astype(np.float32)
    w = rng.random(n).astype(np.float32)
    w[:20] = 0
    exact = _brute_weighted_xauc(p, t, w)
    m = XAUC()
    m.update(T(p[:100]), T(t[:100]), weights=T(w[:100]))
    m.update(T(p[100:]), T(t[100:]), weights=T(w[100:]))
    assert m.compute().item() == pytest.approx(exact, abs=1e-9)
    inb = XAUC(in_batch=True)
    inb.update(T(p[:100]), T(t[:100]), weights=T(w[:100]))
    inb.update(T(p[100:]), T(t[100:]), weights=T(w[100:]))
    halves = [
        _brute_weighted_xauc(p[:100], t[:100], w[:100]),
        _brute_weighted_xauc(p[100:], t[100:], w[100:]),
    ]
    assert inb.compute().item() == pytest.approx(np.mean(halves), abs=1e-9)
    s = XAUC(max_pairs=400_000, seed=1)
    s.update(T(p), T(t), weights=T(w))
    assert s.compute().item() == pytest.approx(exact, abs=0.01)


def test_grouped_xauc_weighted_matches_brute_force(rng):
    """Per group the weighted XAUC, averaged weighted by the group's total weight."""
    n = 400
    p = np.round(rng.random(n), 2).astype(np.float32)
    t = np.round(p + rng.normal(scale=0.3, size=n), 1).astype(np.float32)
    w = rng.random(n).astype(np.float32)
    g = rng.integers(0, 15, n)
    m = GroupedXAUC(grouping_key="u")
    m.update(T(p), T(t), weights=T(w), grouping_key=T(g))
    num = den = 0.0
    for k in np.unique(g):
        s = g == k
        if s.sum() >= 2:
            num += _brute_weighted_xauc(p[s], t[s], w[s]) * w[s].astype(np.float64).sum()
            den += w[s].astype(np.float64).sum()
    assert m.compute().item() == pytest.approx(num / den, abs=1e-9)
    sampled = GroupedXAUC(grouping_key="u", max_pairs_per_group=20_000, seed=2)
    sampled.update(T(p), T(t), weights=T(w), grouping_key=T(g))
    assert sampled.compute().item() == pytest.approx(num / den, abs=0.01)


# --- Accuracy, RecallAtK ----------------------------------------------------------------------
def test_accuracy_weighted_torchrec_values():
    """torchrec/metrics/tests/test_accuracy.py threshold cases. torchrec predicts positive
    at ``p >= threshold`` (``inclusive=True`` here): 0.28, 1.0, 0.0; tzrec / rankboard's
    default ``p > threshold`` reads 0.36 on the first case (0.6 sits on the threshold)."""
    labels = torch.tensor([1, 0, 0, 1, 1])
    cases = [
        (torch.tensor([0.2, 0.6, 0.8, 0.4, 0.9]), [0.3, 0.2, 0.5, 0.8, 0.7], 0.6, 0.28),
        (torch.tensor([1.0, 0, 0, 1, 1]), [1.0] * 5, 0.6, 1.0),
        (torch.tensor([0.0, 1, 1, 0, 0]), [1.0] * 5, 0.1, 0.0),
    ]
    for preds, w, thr, expected in cases:
        m = Accuracy(threshold=thr, inclusive=True)
        m.update(preds, labels, weights=torch.tensor(w))
        assert m.compute().item() == pytest.approx(expected, abs=1e-6)
    tz = Accuracy(threshold=0.6)
    tz.update(cases[0][0], labels, weights=torch.tensor(cases[0][1]))
    assert tz.compute().item() == pytest.approx(0.36, abs=1e-6)


def test_accuracy_and_recall_weighted_definitions(rng):
    """Weighted accuracy ``sum w [correct] / sum w`` (binary and top-k), weighted recall@k
    (each row's relevance scaled by its weight), batches mixed with unweighted ones."""
    n, c = 300, 6
    scores = rng.random((n, c)).astype(np.float32)
    ids = rng.integers(0, c, n)
    rel = (rng.random((n, c)) < 0.3).astype(np.float32)
    w = rng.random(n).astype(np.float32)
    top2 = np.argsort(-scores, axis=1)[:, :2]
    hit_id = (top2 == ids[:, None]).any(1)
    acc = Accuracy(top_k=2)
    acc.update(T(scores[:100]), T(ids[:100]))
    acc.update(T(scores[100:]), T(ids[100:]), weights=T(w[100:]))
    ww = np.concatenate([np.ones(100), w[100:].astype(np.float64)])
    assert acc.compute().item() == pytest.approx((ww * hit_id).sum() / ww.sum(), abs=1e-9)

    p = rng.random(n).astype(np.float32)
    y = (rng.random(n) < 0.5).astype(np.int64)
    b = Accuracy(threshold=0.4)
    b.update(T(p), T(y), weights=T(w))
    wd = w.astype(np.float64)
    assert b.compute().item() == pytest.approx((wd * ((p > 0.4) == y)).sum() / wd.sum(), 1e-9)

    r = RecallAtK(top_k=2)
    r.update(T(scores), T(rel), weights=T(w))
    found = np.take_along_axis(rel, top2, 1).sum(1)
    assert r.compute().item() == pytest.approx((wd * found).sum() / (wd * rel.sum(1)).sum(), 1e-9)
    r1 = RecallAtK(top_k=2)
    r1.update(T(scores), T(ids), weights=T(w))
    assert r1.compute().item() == pytest.approx((wd * hit_id).sum() / wd.sum(), abs=1e-9)


def test_zero_total_weight_is_nan():
    """All weights zero: NaN in rankboard (torchrec reads 0 for accuracy / XAUC)."""
    a = Accuracy()
    a.update(torch.tensor([0.9]), torch.tensor([1]), weights=torch.tensor([0.0]))
    assert math.isnan(a.compute().item())
    x = XAUC()
    x.update(torch.tensor([0.1, 0.2]), torch.tensor([1.0, 2.0]), weights=torch.zeros(2))
    assert math.isnan(x.compute().item())
