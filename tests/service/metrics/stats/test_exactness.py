"""Exactness of the closed forms against definitional O(n1 · n0) / pair-sum code written
here, and point values against the metrics' own ``compute()``."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

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
from rankboard.service.metrics.functional.histogram import binned_histogram
from rankboard.service.metrics.stats import (
    Columns,
    arm_stats,
    auc_influence,
    delong_variance,
    grouped_auc_influence,
    grouped_xauc_influence,
    influence_variance,
    ne_influence,
    paired_delong,
    xauc_variance,
)
from rankboard.service.metrics.stats.delong import equal_width_bins


def _pair_kernel(p: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Definitional ψ(X_i, Y_j) matrix (positives x negatives), ties one half."""
    xp, xn = p[y == 1][:, None], p[y == 0][None, :]
    return (xp > xn) + 0.5 * (xp == xn), np.flatnonzero(y == 1)


def _delong_definitional(p: np.ndarray, y: np.ndarray, w: np.ndarray | None = None):
    """DeLong 1988 by definition: placements from the full pair matrix, weighted as
    documented (unit weights: S10/n1 + S01/n0)."""
    psi, _ = _pair_kernel(p.astype(np.float64), y)
    w = np.ones(y.size) if w is None else w.astype(np.float64)
    w1, w0 = w[y == 1], w[y == 0]
    auc = float(w1 @ psi @ w0) / (w1.sum() * w0.sum())
    v10 = psi @ w0 / w0.sum()
    v01 = w1 @ psi / w1.sum()
    n1, n0 = w1.size, w0.size
    var = (
        n1 / (n1 - 1) * np.sum(w1**2 * (v10 - auc) ** 2) / w1.sum() ** 2
        + n0 / (n0 - 1) * np.sum(w0**2 * (v01 - auc) ** 2) / w0.sum() ** 2
    )
    return auc, var, v10, v01


def _textbook_delong(p: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    psi, _ = _pair_kernel(p.astype(np.float64), y)
    auc = psi.mean()
    v10, v01 = psi.mean(1), psi.mean(0)
    s10 = np.sum((v10 - auc) ** 2) / (v10.size - 1)
    s01 = np.sum((v01 - auc) ** 2) / (v01.size - 1)
    return auc, s10 / v10.size + s01 / v01.size


@pytest.mark.parametrize("n", [7, 50, 301])
def test_delong_matches_textbook_with_ties(n: int) -> None:
    rng = np.random.default_rng(n)
    y = rng.integers(0, 2, n)
    y[:4] = [0, 1, 0, 1]
    p = rng.integers(-3, 3, n).astype(np.float32) / 5  # many ties
    p[:6] = [-0.0, 0.0, -0.0, 0.0, -0.0, 0.0]  # equal scores, different bits
    auc, var = _textbook_delong(p, y)
    r = auc_influence(p, y)
    assert r.value == pytest.approx(auc, abs=1e-12)
    assert delong_variance(p, y) == pytest.approx(var, rel=1e-9, abs=1e-15)


def test_weighted_delong_matches_definition() -> None:
    rng = np.random.default_rng(3)
    n = 200
    y = rng.integers(0, 2, n)
    p = rng.integers(0, 20, n).astype(np.float32) / 19
    w = rng.uniform(0.1, 3.0, n).astype(np.float32)
    auc, var, _, _ = _delong_definitional(p, y, w)
    r = auc_influence(p, y, w)
    assert r.value == pytest.approx(auc, rel=1e-12)
    assert delong_variance(p, y, w) == pytest.approx(var, rel=1e-9)
    # unit weights give the textbook formula
    assert delong_variance(p, y, np.ones(n)) == pytest.approx(_textbook_delong(p, y)[1], rel=1e-9)


def test_paired_delong_matches_covariance_formula() -> None:
    rng = np.random.default_rng(4)
    n = 240
    y = rng.integers(0, 2, n)
    pa = (y + rng.normal(0, 1, n)).round(1).astype(np.float32)
    pb = (pa + 0.3 * y + rng.normal(0, 0.5, n)).round(1).astype(np.float32)
    psi_a, _ = _pair_kernel(pa.astype(np.float64), y)
    psi_b, _ = _pair_kernel(pb.astype(np.float64), y)
    a_auc, b_auc = psi_a.mean(), psi_b.mean()
    v10a, v01a, v10b, v01b = psi_a.mean(1), psi_a.mean(0), psi_b.mean(1), psi_b.mean(0)
    n1, n0 = v10a.size, v01a.size
    s10 = np.cov(np.vstack([v10a, v10b]))  # (n - 1) denominators
    s01 = np.cov(np.vstack([v01a, v01b]))
    var = (s10[0, 0] + s10[1, 1] - 2 * s10[0, 1]) / n1 + (
        s01[0, 0] + s01[1, 1] - 2 * s01[0, 1]
    ) / n0
    d, se, p = paired_delong(pa, pb, y)
    assert d == pytest.approx(b_auc - a_auc, abs=1e-12)
    assert se**2 == pytest.approx(var, rel=1e-9)
    from scipy.stats import norm

    assert p == pytest.approx(2 * norm.sf(abs(d) / math.sqrt(var)), rel=1e-9)


def test_clustered_auc_matches_obuchowski() -> None:
    """Obuchowski (1997) written out: V10 / V01 summed per cluster, separate cluster counts
    for positives (I10), negatives (I01) and both (I), some clusters with one class."""
    rng = np.random.default_rng(5)
    k = 40
    sizes = rng.integers(1, 8, k)
    c = np.repeat(np.arange(k) * 7 + 100, sizes)
    eff = rng.normal(0, 1, k)[np.repeat(np.arange(k), sizes)]
    y = (rng.uniform(size=c.size) < 1 / (1 + np.exp(-eff))).astype(int)
    p = (eff + y + rng.normal(0, 1, c.size)).round(1).astype(np.float32)
    psi, _ = _pair_kernel(p.astype(np.float64), y)
    n1, n0 = psi.shape
    auc = psi.mean()
    v10 = psi.sum(1) / n0  # per positive, sum over all negatives / N0
    v01 = psi.sum(0) / n1
    cp, cn = c[y == 1], c[y == 0]
    ids = np.unique(c)
    V10 = np.array([v10[cp == i].sum() for i in ids])
    V01 = np.array([v01[cn == i].sum() for i in ids])
    m = np.array([(cp == i).sum() for i in ids])
    nn = np.array([(cn == i).sum() for i in ids])
    i10, i01, i_all = (m > 0).sum(), (nn > 0).sum(), ids.size
    s10 = i10 / ((i10 - 1) * n1) * np.sum((V10 - m * auc) ** 2)
    s01 = i01 / ((i01 - 1) * n0) * np.sum((V01 - nn * auc) ** 2)
    s11 = i_all / (i_all - 1) * np.sum((V10 - m * auc) * (V01 - nn * auc))
    var = s10 / n1 + s01 / n0 + 2 * s11 / (n1 * n0)
    assert (m == 0).any() and (nn == 0).any()  # the separate counts matter
    assert delong_variance(p, y, clusters=c) == pytest.approx(var, rel=1e-9)
    s = arm_stats(AUC(thresholds=0), Columns(p, y, keys={"user": c}), name="a", cluster="user")
    assert s.se**2 == pytest.approx(var, rel=1e-9)
    assert (s.method, s.cluster, s.n_units) == ("delong-clustered", "user", i_all)


def test_xauc_variance_matches_pair_sum() -> None:
    rng = np.random.default_rng(6)
    n = 150
    p = rng.integers(0, 12, n).astype(np.float32)
    t = rng.integers(0, 9, n).astype(np.float32)
    h = ((p[:, None] - p[None, :]) * (t[:, None] - t[None, :]) > 0).astype(float)
    theta = h.sum() / (n * (n - 1))
    v = h.sum(1) / (n - 1)  # share of the n - 1 pairs of i that are concordant
    var = 4 * np.sum((v - v.mean()) ** 2) / (n - 1) / n
    assert xauc_variance(p, t) == pytest.approx(var, rel=1e-9)
    s = arm_stats(XAUC(), Columns(p, t), name="x", cluster=None)
    assert s.value == pytest.approx(theta, abs=1e-12)
    assert s.se**2 == pytest.approx(var, rel=1e-9)


def _groups(rng: np.random.Generator, k: int):
    sizes = rng.integers(1, 9, k)
    g = np.repeat(rng.permutation(k) * 3 + 11, sizes)
    y = rng.integers(0, 2, g.size)
    p = rng.integers(0, 10, g.size).astype(np.float32) / 9
    return p, y, g


def test_grouped_auc_delta_over_groups() -> None:
    rng = np.random.default_rng(7)
    p, y, g = _groups(rng, 60)
    aucs = []
    for key in np.unique(g):
        sel = g == key
        if 0 < y[sel].sum() < sel.sum():
            aucs.append(_pair_kernel(p[sel].astype(np.float64), y[sel])[0].mean())
    aucs = np.array(aucs)
    r = grouped_auc_influence(p, y, g)
    assert r.value == pytest.approx(aucs.mean(), abs=1e-12)
    assert r.groups_counted == aucs.size
    assert r.variance == pytest.approx(aucs.var(ddof=1) / aucs.size, rel=1e-9)
    # per-sample values summed within the groups give the same variance
    v, units = influence_variance(r.psi, clusters=g, counted=r.counted)
    assert v == pytest.approx(r.variance, rel=1e-9) and units == aucs.size
    s = arm_stats(
        GroupedAUC(grouping_key="uid"), Columns(p, y, keys={"uid": g}), name="g", cluster=None
    )
    assert (s.method, s.cluster, s.n_units) == ("delta-over-groups", "uid", aucs.size)
    assert s.se == pytest.approx(math.sqrt(r.variance), rel=1e-12)


def test_grouped_auc_coarser_cluster() -> None:
    rng = np.random.default_rng(8)
    p, y, g = _groups(rng, 80)
    country = g % 5
    aucs, cty = [], []
    for key in np.unique(g):
        sel = g == key
        if 0 < y[sel].sum() < sel.sum():
            aucs.append(_pair_kernel(p[sel].astype(np.float64), y[sel])[0].mean())
            cty.append(key % 5)
    aucs, cty = np.array(aucs), np.array(cty)
    big_g = aucs.size
    sums = np.array([np.sum(aucs[cty == c] - aucs.mean()) for c in np.unique(cty)]) / big_g
    k = sums.size
    var = k / (k - 1) * np.sum((sums - sums.mean()) ** 2)
    cols = Columns(p, y, keys={"uid": g, "country": country})
    s = arm_stats(GroupedAUC(grouping_key="uid"), cols, name="g", cluster="country")
    assert (s.cluster, s.n_units) == ("country", k)
    assert s.se**2 == pytest.approx(var, rel=1e-9)


def test_grouped_xauc_ratio_delta() -> None:
    rng = np.random.default_rng(9)
    p, _, g = _groups(rng, 50)
    t = rng.integers(0, 5, g.size).astype(np.float32)
    a, b = [], []
    for key in np.unique(g):
        sel = g == key
        m = int(sel.sum())
        if m >= 2:
            pp, tt = p[sel], t[sel]
            c = np.sum(np.triu((pp[:, None] - pp[None]) * (tt[:, None] - tt[None]) > 0, 1))
            a.append(m * c / (m * (m - 1) / 2))
            b.append(m)
    a, b = np.array(a), np.array(b, dtype=float)
    theta = a.sum() / b.sum()
    phi = (a - theta * b) / b.mean()
    var = np.sum(phi**2) / (a.size * (a.size - 1))
    r = grouped_xauc_influence(p, t, g)
    assert r.value == pytest.approx(theta, abs=1e-12)
    assert r.variance == pytest.approx(var, rel=1e-9)


def test_ne_delta_method_matches_finite_differences() -> None:
    rng = np.random.default_rng(10)
    n = 500
    y = rng.integers(0, 2, n).astype(np.float64)
    p = np.clip(rng.beta(2, 3, n), 1e-6, 1 - 1e-6)
    w = rng.uniform(0.5, 2.0, n)

    def f(z: np.ndarray) -> float:  # NE as a function of the means (Σw·ce, Σw·y, Σw)/n
        a, r = z[0] / z[2], z[1] / z[2]
        return a / (-(r * np.log(r) + (1 - r) * np.log(1 - r)))

    ce = -(y * np.log(p) + (1 - y) * np.log(1 - p))
    terms = np.vstack([w * ce, w * y, w])
    mu = terms.mean(1)
    grad = np.array([(f(mu + e) - f(mu - e)) / 2e-6 for e in np.eye(3) * 1e-6])
    var = grad @ np.cov(terms) @ grad / n  # delta method with the sample covariance
    r = ne_influence(p, y, w)
    assert r.value == pytest.approx(f(mu), rel=1e-12)
    assert influence_variance(r.psi)[0] == pytest.approx(var, rel=1e-6)


def test_mse_delta_method_written_out() -> None:
    rng = np.random.default_rng(11)
    n = 300
    p, t, w = rng.normal(size=n), rng.normal(size=n), rng.uniform(0.5, 2, n)
    e = (p - t) ** 2
    theta = np.sum(w * e) / w.sum()
    # ratio of means Σwe / Σw: Var = Var(w (e - θ)) / (n · mean(w)²)
    var = np.var(w * (e - theta), ddof=1) / (n * w.mean() ** 2)
    s = arm_stats(MeanSquaredError(), Columns(p, t, w), name="mse", cluster=None)
    assert s.value == pytest.approx(theta, rel=1e-12)
    assert s.se**2 == pytest.approx(var, rel=1e-9)


def test_threshold_point_buckets_delong_by_definition() -> None:
    """torchmetrics' threshold-point AUC: pairs in one bucket count one half, except in
    the last bucket (scores of exactly 1.0), where they count 0."""
    pytest.importorskip("rankboard.service.metrics.functional.histogram").__dict__.get(
        "bin_indices"
    ) or pytest.skip("no threshold points in this tree")
    from rankboard.service.metrics.functional.histogram import bin_indices
    from rankboard.service.metrics.stats import binned_auc_influence

    rng = np.random.default_rng(15)
    n, t = 300, 11
    y = rng.integers(0, 2, n)
    p = np.clip(rng.normal(0.5 + 0.2 * y, 0.25), 0, 1).astype(np.float32)
    p[:30] = 1.0
    b = bin_indices(torch.from_numpy(p), t).numpy()
    bp, bn = b[y == 1][:, None], b[y == 0][None, :]
    psi = (bp > bn) + 0.5 * ((bp == bn) & (bp < t - 1))
    auc = psi.mean()
    v10, v01 = psi.mean(1), psi.mean(0)
    var = np.var(v10, ddof=1) / v10.size + np.var(v01, ddof=1) / v01.size
    r = binned_auc_influence(p, y, thresholds=t)
    assert r.value == pytest.approx(auc, abs=1e-12)
    assert influence_variance(r.psi, strata=r.strata)[0] == pytest.approx(var, rel=1e-9)


def test_equal_width_bins_agree_with_the_metric_histogram() -> None:
    rng = np.random.default_rng(12)
    p = torch.from_numpy(np.concatenate([rng.uniform(size=1000), [0.0, 1.0, 0.5]]).astype("f4"))
    y = torch.from_numpy(rng.integers(0, 2, p.numel()).astype("f4"))
    for bins in (1, 7, 200):
        idx = equal_width_bins(p, bins) + y.to(torch.int64) * bins
        ours = torch.bincount(idx, minlength=2 * bins).to(torch.float64)
        assert torch.equal(ours, binned_histogram(p, y, bins))


def _metric_value(metric, cols: Columns, key: str | None = None) -> float:
    kw = {}
    if cols.weights is not None:
        kw["weights"] = torch.from_numpy(cols.weights)
    if key is not None:
        kw["grouping_key"] = torch.from_numpy(cols.keys[key])
    half = cols.n // 2  # two updates, as a stream would
    for sl in (slice(0, half), slice(half, None)):
        metric.update(
            torch.from_numpy(cols.preds[sl]),
            torch.from_numpy(cols.target[sl]),
            **{k: v[sl] for k, v in kw.items()},
        )
    return float(metric.compute())


def _binned_auc(kind: str):
    try:
        return AUC(**{kind: 50})
    except TypeError:  # before AUC(bins=...) existed
        return AUC(thresholds=50) if kind == "bins" else None


@pytest.mark.parametrize(
    "make",
    [
        lambda: AUC(thresholds=0),
        lambda: _binned_auc("bins"),
        lambda: _binned_auc("thresholds"),
        lambda: NormalizedEntropy(),
        lambda: MeanSquaredError(),
        lambda: MeanAbsoluteError(),
    ],
    ids=["auc-exact", "auc-bins", "auc-points", "ne", "mse", "mae"],
)
@pytest.mark.parametrize("weighted", [False, True])
def test_value_equals_metric_compute_weighted(make, weighted: bool) -> None:
    metric = make()
    if metric is None:
        pytest.skip("no threshold-point AUC in this tree")
    rng = np.random.default_rng(13)
    n = 2000
    y = rng.integers(0, 2, n).astype(np.float32)
    p = np.clip(rng.normal(0.3 + 0.3 * y, 0.2), 0, 1).astype(np.float32)
    p[:20] = 1.0  # the last threshold point
    w = rng.uniform(0.2, 2, n).astype(np.float32) if weighted else None
    cols = Columns(p, y, w)
    s = arm_stats(metric, cols, name="m", cluster=None)
    expected = _metric_value(metric, cols)
    assert s.value == pytest.approx(expected, rel=1e-12, abs=0)
    assert s.se is not None and s.se > 0


def test_value_equals_metric_compute_other_kinds() -> None:
    rng = np.random.default_rng(14)
    n = 600
    y = rng.integers(0, 2, n).astype(np.float32)
    p = rng.uniform(size=n).astype(np.float32)
    real = rng.integers(0, 7, n).astype(np.float32)
    g = rng.integers(0, 40, n).astype(np.int64)
    mc = rng.dirichlet(np.ones(4), n).astype(np.float32)
    cls = rng.integers(0, 4, n)
    cases = [
        (XAUC(), Columns(p, real), None),
        (GroupedAUC(grouping_key="u"), Columns(p, y, keys={"u": g}), "u"),
        (GroupedXAUC(grouping_key="u"), Columns(p, real, keys={"u": g}), "u"),
        (Accuracy(), Columns(p, y), None),
        (Accuracy(top_k=2), Columns(mc, cls), None),
        (MulticlassAUC(thresholds=0), Columns(mc, cls), None),
        (RecallAtK(top_k=2), Columns(mc, cls), None),
    ]
    for metric, cols, key in cases:
        s = arm_stats(metric, cols, name="m", cluster=None, bootstrap_replicates=20)
        expected = _metric_value(metric, cols, key)
        assert s.value == pytest.approx(expected, rel=1e-12), type(metric).__name__
        assert s.se is not None and s.se > 0, type(metric).__name__
