"""Every metric against an independent reference (sklearn, brute force) on random data."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from sklearn.metrics import (
    accuracy_score,
    mean_absolute_error,
    mean_squared_error,
    roc_auc_score,
)

from rankboard.service.metrics import (
    AUC,
    XAUC,
    Accuracy,
    GroupedAUC,
    GroupedXAUC,
    MeanAbsoluteError,
    MeanSquaredError,
    MulticlassAUC,
    NormalizedEntropy,
    RecallAtK,
)

T = torch.from_numpy


def _feed(m, n_batches, *arrays, **kw_arrays):
    """Update ``m`` with ``arrays`` split into ``n_batches`` chunks (some empty)."""
    n = len(arrays[0])
    cuts = np.linspace(0, n, n_batches + 1).astype(int)
    for a, b in itertools.pairwise(cuts):
        kw = {k: T(v[a:b]) for k, v in kw_arrays.items()}
        m.update(*(T(x[a:b]) for x in arrays), **kw)
    return m


def _binary(rng, n, ties=True):
    p = rng.random(n).astype(np.float32)
    if ties:
        p = np.round(p, 2).astype(np.float32)
    y = (rng.random(n) < 0.3).astype(np.float32)
    return p, y


@pytest.mark.parametrize("n", [2, 17, 3000])
@pytest.mark.parametrize("weighted", [False, True])
def test_exact_auc_matches_sklearn(rng, kernel, n, weighted):
    p, y = _binary(rng, n)
    y[0], y[-1] = 0, 1
    w = rng.random(n).astype(np.float32) if weighted else None
    m = AUC(thresholds=0)
    _feed(m, 3, p, y, **({"weights": w} if weighted else {}))
    assert m.compute().item() == pytest.approx(roc_auc_score(y, p, sample_weight=w), abs=1e-9)


@pytest.mark.parametrize("bins", [1, 7, 200])
def test_binned_auc_equals_exact_auc_of_bin_indices(rng, bins):
    """Equal-width bins (rankboard's ``bins``): sklearn's AUC of the bin indices."""
    p, y = _binary(rng, 5000, ties=False)
    p[:5] = [0.0, 1.0, 0.5, 1 / bins, 0.999999]
    w = rng.random(5000).astype(np.float32)
    m = AUC(bins=bins)
    _feed(m, 4, p, y, weights=w)
    binned = np.minimum(np.floor(p * np.float32(bins)), bins - 1)
    expected = roc_auc_score(y, binned, sample_weight=w) if bins > 1 else 0.5
    assert m.compute().item() == pytest.approx(expected, abs=1e-9)


@pytest.mark.parametrize("thresholds", [0, 50, None])
def test_auc_degenerate_is_nan(thresholds):
    m = AUC(thresholds=thresholds) if thresholds is not None else AUC(bins=50)
    assert math.isnan(m.compute().item())
    m.update(torch.tensor([0.2, 0.3]), torch.tensor([1, 1]))
    assert math.isnan(m.compute().item())


@pytest.mark.parametrize("group_count", [1, 7, 300])
def test_grouped_auc_matches_per_group_sklearn(rng, kernel, group_count):
    n = 4000
    p, y = _binary(rng, n)
    g = rng.integers(-50, -50 + group_count, n)
    g[:3] = [10**12, 10**12, -(10**12)]  # wide key range, singleton and pair groups
    m = GroupedAUC(grouping_key="uid")
    _feed(m, 5, p, y, grouping_key=g)
    ref = [
        roc_auc_score(y[g == k], p[g == k])
        for k in np.unique(g)
        if 0 < y[g == k].sum() < (g == k).sum()
    ]
    value, count = m.compute_with_count()
    assert count.item() == len(ref)
    assert value.item() == pytest.approx(np.mean(ref), abs=1e-9)
    assert m.compute().item() == value.item() and m.num_groups == len(ref)


def test_grouped_auc_no_valid_group_is_nan(kernel):
    m = GroupedAUC(grouping_key="uid")
    m.update(
        torch.tensor([0.1, 0.2, 0.3]), torch.tensor([1, 1, 0]), grouping_key=torch.tensor([1, 1, 2])
    )
    value, count = m.compute_with_count()
    assert math.isnan(value.item()) and count.item() == 0
    empty = GroupedAUC(grouping_key="uid")
    assert math.isnan(empty.compute().item())


def _brute_xauc(p, t):
    d = (t[:, None] - t[None, :]).astype(np.float64) * (p[:, None] - p[None, :])
    n = len(p)
    return float((np.triu(d, 1) > 0).sum()) / (n * (n - 1) / 2)


@pytest.mark.parametrize("n", [2, 3, 50, 1500])
def test_exact_xauc_matches_brute_force(rng, kernel, n):
    p = np.round(rng.random(n), 2).astype(np.float32)
    t = rng.integers(0, 10, n).astype(np.float32)
    m = XAUC()
    _feed(m, 3, p, t)
    assert m.compute().item() == pytest.approx(_brute_xauc(p, t), abs=1e-12)


def test_exact_xauc_5k_brute_force(rng):
    p = np.round(rng.normal(size=5000), 3).astype(np.float32)
    t = np.round(rng.exponential(size=5000), 1).astype(np.float32)
    m = XAUC()
    m.update(T(p), T(t))
    assert m.compute().item() == pytest.approx(_brute_xauc(p, t), abs=1e-12)


def test_xauc_degenerate_and_modes(rng):
    m = XAUC()
    m.update(torch.tensor([0.5]), torch.tensor([1.0]))
    assert math.isnan(m.compute().item())
    p = rng.random(400).astype(np.float32)
    t = (p + rng.normal(scale=0.3, size=400)).astype(np.float32)
    exact = _brute_xauc(p, t)
    sampled = XAUC(sample_ratio=0.5, seed=5)
    sampled.update(T(p), T(t))
    v = sampled.compute().item()
    assert abs(v - exact) < 0.02
    # seeded once: the next compute is a new draw, and the seed replays the sequence
    replay = XAUC(sample_ratio=0.5, seed=5)
    replay.update(T(p), T(t))
    assert replay.compute().item() == v and sampled.compute().item() != v
    capped = XAUC(max_pairs=10)
    capped.update(T(p), T(t))
    assert 0 <= capped.compute().item() <= 1
    inb = XAUC(in_batch=True)
    _feed(inb, 2, p, t)
    halves = [_brute_xauc(p[:200], t[:200]), _brute_xauc(p[200:], t[200:])]
    assert inb.compute().item() == pytest.approx(np.mean(halves), abs=1e-12)


@pytest.mark.parametrize("group_count", [1, 5, 200])
def test_grouped_xauc_matches_brute_force(rng, kernel, group_count):
    n = 1500
    p = np.round(rng.random(n), 2).astype(np.float32)
    t = rng.integers(0, 5, n).astype(np.float32)
    g = rng.integers(0, group_count, n)
    g[0] = 10**9  # a singleton group: not counted
    m = GroupedXAUC(grouping_key="uid")
    _feed(m, 3, p, t, grouping_key=g)
    num = den = 0.0
    counted = 0
    for k in np.unique(g):
        sel = g == k
        if sel.sum() >= 2:
            num += sel.sum() * _brute_xauc(p[sel], t[sel])
            den += sel.sum()
            counted += 1
    value, count = m.compute_with_count()
    assert value.item() == pytest.approx(num / den, abs=1e-12)
    assert count.item() == counted


def test_grouped_xauc_sampling_and_degenerate(rng):
    m = GroupedXAUC(grouping_key="uid", max_pairs_per_group=10_000)
    p = rng.random(300).astype(np.float32)
    t = p.copy()
    m.update(T(p), T(t), grouping_key=T(rng.integers(0, 3, 300)))
    assert m.compute().item() == 1.0  # every sampled pair is concordant
    single = GroupedXAUC(grouping_key="uid")
    single.update(
        torch.tensor([0.1, 0.2]), torch.tensor([1.0, 2.0]), grouping_key=torch.tensor([1, 2])
    )
    assert math.isnan(single.compute().item())


@pytest.mark.parametrize("average", ["macro", "weighted"])
@pytest.mark.parametrize("thresholds", [0, 20])
def test_multiclass_auc_matches_sklearn(rng, average, thresholds):
    n, c = 2000, 4
    logits = rng.normal(size=(n, c))
    p = (np.exp(logits) / np.exp(logits).sum(1, keepdims=True)).astype(np.float32)
    p = np.round(p, 2).astype(np.float32)
    y = rng.integers(0, c, n)
    m = MulticlassAUC(thresholds=0, bins=thresholds, average=average)
    _feed(m, 3, p, y)
    if thresholds:
        binned = np.minimum(np.floor(p * np.float32(thresholds)), thresholds - 1)
        per = [roc_auc_score(y == k, binned[:, k]) for k in range(c)]
    else:
        per = [roc_auc_score(y == k, p[:, k]) for k in range(c)]
    support = np.bincount(y, minlength=c)
    expected = np.mean(per) if average == "macro" else np.average(per, weights=support)
    assert m.compute().item() == pytest.approx(expected, abs=1e-9)


def test_regression_and_entropy_match_references(rng):
    n = 3000
    p = rng.random(n).astype(np.float32)
    y = (rng.random(n) < p).astype(np.float32)
    w = rng.random(n).astype(np.float32)
    mae, mse = MeanAbsoluteError(), MeanSquaredError()
    for m in (mae, mse):
        _feed(m, 3, p, y, weights=w)
    y64, p64, w64 = y.astype(np.float64), p.astype(np.float64), w.astype(np.float64)
    expected_mae = mean_absolute_error(y64, p64, sample_weight=w64)
    assert mae.compute().item() == pytest.approx(expected_mae, rel=1e-9)
    expected_mse = mean_squared_error(y64, p64, sample_weight=w64)
    assert mse.compute().item() == pytest.approx(expected_mse, rel=1e-9)
    ne = NormalizedEntropy()
    _feed(ne, 3, p, y, weights=w)
    pd, yd, wd = p.astype(np.float64), y.astype(np.float64), w.astype(np.float64)
    ce = -(yd * np.log(pd) + (1 - yd) * np.log(1 - pd))
    rate = (wd * yd).sum() / wd.sum()
    base = -(rate * np.log(rate) + (1 - rate) * np.log(1 - rate))
    assert ne.compute().item() == pytest.approx((wd * ce).sum() / wd.sum() / base, rel=1e-9)


def test_entropy_and_errors_degenerate():
    for m in (NormalizedEntropy(), MeanAbsoluteError(), MeanSquaredError()):
        assert math.isnan(m.compute().item())
    ne = NormalizedEntropy(eta=1e-6)
    ne.update(torch.tensor([0.0, 0.3]), torch.tensor([0, 0]))  # one class: finite
    assert math.isfinite(ne.compute().item())
    mae = MeanAbsoluteError()
    mae.update(torch.tensor([1.0]), torch.tensor([2.0]), weights=torch.tensor([0.0]))
    assert math.isnan(mae.compute().item())


def test_accuracy_and_recall_match_references(rng):
    n, c = 1000, 6
    p = rng.random(n).astype(np.float32)
    y = (rng.random(n) < 0.5).astype(np.float32)
    acc = Accuracy(threshold=0.4)
    _feed(acc, 2, p, y)
    assert acc.compute().item() == pytest.approx(accuracy_score(y, p > np.float32(0.4)))
    scores = rng.random((n, c)).astype(np.float32)
    cls = rng.integers(0, c, n)
    top3 = Accuracy(top_k=3)
    _feed(top3, 2, scores, cls)
    rank = (scores > scores[np.arange(n), cls][:, None]).sum(1)
    assert top3.compute().item() == pytest.approx(np.mean(rank < 3))
    rel = (rng.random((n, c)) < 0.3).astype(np.float32)
    rec = RecallAtK(top_k=2)
    _feed(rec, 2, scores, rel)
    top = np.argsort(-scores, axis=1)[:, :2]
    hits = np.take_along_axis(rel, top, 1).sum()
    assert rec.compute().item() == pytest.approx(hits / rel.sum())
    ids = RecallAtK(top_k=2)
    _feed(ids, 2, scores, cls)
    assert ids.compute().item() == pytest.approx(np.mean((top == cls[:, None]).any(1)))
    big_k = RecallAtK(top_k=100)
    big_k.update(T(scores), T(rel))
    assert big_k.compute().item() == 1.0
    assert math.isnan(RecallAtK().compute().item())


def test_xauc_max_pairs_is_the_number_of_pairs_sampled(rng):
    n = 400
    p = rng.random(n).astype(np.float32)
    t = (p + rng.normal(scale=0.3, size=n)).astype(np.float32)
    exact = _brute_xauc(p, t)
    # as in the reference, max_pairs replaces sample_ratio: 60k pairs, not 79 (1e-3 of 79.8k)
    many = XAUC(max_pairs=60_000)
    many.update(T(p), T(t))
    assert abs(many.compute().item() - exact) < 0.01
    for k in (1, 7, 10**9):  # 10**9 is capped at the n (n - 1) / 2 pairs there are
        m = XAUC(max_pairs=k, sample_ratio=0.5)
        m.update(T(p), T(t))
        hits = m.compute().item() * min(k, n * (n - 1) // 2)
        assert hits == pytest.approx(round(hits), abs=1e-6)
    concordant, discordant = XAUC(sample_ratio=1e-3), XAUC(sample_ratio=1e-3)
    concordant.update(T(p), T(p))
    discordant.update(T(p), T(-p))
    assert concordant.compute().item() == 1.0 and discordant.compute().item() == 0.0


def test_grouped_xauc_sampling_honours_max_pairs_per_group(rng):
    # groups of two have one pair: any sampling finds it, so the estimate is exact
    n = 300
    p = rng.random(n).astype(np.float32)
    t = rng.random(n).astype(np.float32)
    g = np.repeat(np.arange(n // 2), 2)
    exact = GroupedXAUC(grouping_key="uid")
    sampled = GroupedXAUC(grouping_key="uid", max_pairs_per_group=1)
    for m in (exact, sampled):
        m.update(T(p), T(t), grouping_key=T(g))
    assert sampled.compute().item() == pytest.approx(exact.compute().item(), abs=1e-12)
    # one group of 60: min(max_pairs_per_group, 1770) pairs are drawn
    p60, t60 = p[:60], t[:60]
    for k in (1, 7, 10**6):
        m = GroupedXAUC(grouping_key="uid", max_pairs_per_group=k)
        m.update(T(p60), T(t60), grouping_key=torch.zeros(60, dtype=torch.int64))
        hits = m.compute().item() * min(k, 60 * 59 // 2)
        assert hits == pytest.approx(round(hits), abs=1e-6)
    # weights are group sizes: a concordant group of 10, a discordant one of 30, a singleton
    q = rng.permutation(41).astype(np.float32)
    tt = np.concatenate([q[:10], -q[10:40], [5.0]]).astype(np.float32)
    keys = np.concatenate([np.zeros(10), np.ones(30), [2]]).astype(np.int64)
    for mp in (None, 3):
        m = GroupedXAUC(grouping_key="uid", max_pairs_per_group=mp)
        m.update(T(q), T(tt), grouping_key=T(keys))
        value, count = m.compute_with_count()
        assert value.item() == pytest.approx(10 / 40, abs=1e-12) and count.item() == 2


def test_multiclass_auc_absent_class_and_degenerate(rng):
    n, c = 600, 4
    p = np.round(rng.random((n, c)), 2).astype(np.float32)
    y = rng.integers(0, c - 1, n)  # the last class never occurs: its AUC is undefined
    for average in ("macro", "weighted"):
        m = MulticlassAUC(thresholds=0, average=average)
        m.update(T(p), T(y))
        per = [roc_auc_score(y == k, p[:, k]) for k in range(c - 1)]
        support = np.bincount(y, minlength=c - 1)
        expected = np.mean(per) if average == "macro" else np.average(per, weights=support)
        assert m.compute().item() == pytest.approx(expected, abs=1e-9)
    for thresholds in (0, 10):
        one = MulticlassAUC(thresholds=thresholds)
        assert math.isnan(one.compute().item())
        one.update(T(p[:5]), torch.zeros(5, dtype=torch.int64))  # every class: one side only
        assert math.isnan(one.compute().item())
