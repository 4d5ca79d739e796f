"""Pairing, reasons, verdicts, p-values, bootstrap pairing, bad input, compute_interval."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.stats import norm

from rankboard.service.metrics import (
    AUC,
    XAUC,
    GroupedAUC,
    MeanSquaredError,
    MulticlassAUC,
    NormalizedEntropy,
    RankMetric,
    RecallAtK,
)
from rankboard.service.metrics.stats import (
    DEFAULT_HORIZON,
    ArmStats,
    Columns,
    StatsInputError,
    always_valid_p_value,
    arm_stats,
    compare_arms,
    cs_half_width,
    higher_is_better,
    interval,
    poisson_counts,
)


def _two_models(n: int, seed: int, lift: float = 0.3):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    a = (y + rng.normal(0, 1, n)).astype(np.float32)
    b = (a + lift * y + rng.normal(0, 0.3, n)).astype(np.float32)
    return y, a, b


def test_paired_when_ids_match_in_any_order() -> None:
    y, a, b = _two_models(3000, 1)
    ids = np.arange(3000) * 13 + 5
    perm = np.random.default_rng(2).permutation(3000)
    base = arm_stats(AUC(thresholds=0), Columns(a, y, sample_ids=ids), name="auc", cluster=None)
    arm = arm_stats(
        AUC(thresholds=0), Columns(b[perm], y[perm], sample_ids=ids[perm]), name="auc", cluster=None
    )
    d = compare_arms(base, arm)
    assert d.paired and d.paired_samples == 3000 and d.pairing == "paired on 3000 sample ids"
    # the same delta and SE as paired DeLong on aligned arrays, written out via influence
    ref_a = arm_stats(AUC(thresholds=0), Columns(a, y), name="auc", cluster=None)
    ref_b = arm_stats(AUC(thresholds=0), Columns(b, y), name="auc", cluster=None)
    diff = ref_b.psi - ref_a.psi
    pos = y == 1
    var = sum(np.var(diff[m], ddof=1) * m.sum() for m in (pos, ~pos)) / 3000**2
    assert d.delta == pytest.approx(ref_b.value - ref_a.value, abs=1e-15)
    assert d.se == pytest.approx(math.sqrt(var), rel=1e-9)
    assert d.p_value == pytest.approx(2 * norm.sf(abs(d.delta) / d.se), rel=1e-9)
    assert d.verdict == "better"
    # paired is far tighter than unpaired here
    unpaired = math.sqrt(base.se**2 + arm.se**2)
    assert d.se < unpaired / 2


@pytest.mark.parametrize(
    ("ids_a", "ids_b", "reason"),
    [
        (None, np.arange(10), "unpaired: no sample ids"),
        (np.arange(10), None, "unpaired: no sample ids"),
        (np.r_[np.arange(9), 0], np.arange(10), "unpaired: sample ids repeat in the baseline"),
        (np.arange(10), np.r_[np.arange(9), 3], "unpaired: sample ids repeat in the arm"),
        (np.arange(10), np.arange(1, 11), "unpaired: 18.2% of sample ids have no partner"),
        (np.arange(10), np.arange(9), "unpaired: 10.0% of sample ids have no partner"),
    ],
)
def test_unpaired_reasons(ids_a, ids_b, reason: str) -> None:
    rng = np.random.default_rng(3)
    ya, yb = np.tile([0, 1], 5), np.tile([0, 1], 5)
    if ids_b is not None and ids_b.size == 9:
        yb = yb[:9]
    pa = rng.uniform(size=ya.size).astype(np.float32)
    pb = rng.uniform(size=yb.size).astype(np.float32)
    sa = arm_stats(AUC(thresholds=0), Columns(pa, ya, sample_ids=ids_a), name="a", cluster=None)
    sb = arm_stats(AUC(thresholds=0), Columns(pb, yb, sample_ids=ids_b), name="a", cluster=None)
    d = compare_arms(sa, sb)
    assert not d.paired and d.pairing == reason and d.paired_samples == 0
    assert d.se == pytest.approx(math.sqrt(sa.se**2 + sb.se**2), rel=1e-12)


def test_auc_labels_must_agree_to_pair() -> None:
    y, a, b = _two_models(200, 4)
    ids = np.arange(200)
    y2 = y.copy()
    y2[:3] = 1 - y2[:3]
    sa = arm_stats(AUC(thresholds=0), Columns(a, y, sample_ids=ids), name="a", cluster=None)
    sb = arm_stats(AUC(thresholds=0), Columns(b, y2, sample_ids=ids), name="a", cluster=None)
    d = compare_arms(sa, sb)
    assert not d.paired and d.pairing == "unpaired: labels differ for 3 sample ids"


def test_paired_grouped_auc_clusters_by_base_groups() -> None:
    rng = np.random.default_rng(5)
    n = 4000
    users = rng.integers(0, 300, n)
    y = rng.integers(0, 2, n)
    a = (y + rng.normal(0, 1, n)).astype(np.float32)
    b = (a + 0.2 * y + rng.normal(0, 0.5, n)).astype(np.float32)
    ids = np.arange(n)
    m = GroupedAUC(grouping_key="user_id")
    sa = arm_stats(
        m, Columns(a, y, keys={"user_id": users}, sample_ids=ids), name="g", cluster=None
    )
    sb = arm_stats(
        m, Columns(b, y, keys={"user_id": users}, sample_ids=ids), name="g", cluster=None
    )
    d = compare_arms(sa, sb)
    assert d.paired and sa.cluster == "user_id"
    # written out: per-user AUC differences, their spread over the users
    diffs = []
    for u in np.unique(users):
        s = users == u
        if 0 < y[s].sum() < s.sum():
            pos, neg = y[s] == 1, y[s] == 0

            def auc(p, pos=pos, neg=neg):
                x, z = p[pos][:, None], p[neg][None, :]
                return np.mean((x > z) + 0.5 * (x == z))

            diffs.append(auc(b[s]) - auc(a[s]))
    diffs = np.array(diffs)
    assert d.delta == pytest.approx(diffs.mean(), abs=1e-12)
    assert d.se == pytest.approx(diffs.std(ddof=1) / math.sqrt(diffs.size), rel=1e-9)


class _Precision(RankMetric):
    """A metric the statistics layer does not know: precision at 0.5, from two sums."""

    def __init__(self) -> None:
        super().__init__()
        self.add_state("tp", torch.tensor(0.0, dtype=torch.float64), "sum", persistent=True)
        self.add_state("pp", torch.tensor(0.0, dtype=torch.float64), "sum", persistent=True)

    def update(self, preds, target, *, weights=None, grouping_key=None) -> None:
        b = self._prepare(preds, target, weights, grouping_key)
        if b is None:
            return
        hit = (b.preds > 0.5).to(torch.float64)
        self.tp += (hit * b.target.to(torch.float64)).sum()
        self.pp += hit.sum()

    def compute(self) -> torch.Tensor:
        return self.tp / self.pp


def test_bootstrap_pairs_through_shared_units() -> None:
    rng = np.random.default_rng(6)
    n = 1500
    y = rng.integers(0, 2, n)
    pa = np.clip(rng.normal(0.4 + 0.3 * y, 0.25), 0, 1).astype(np.float32)
    pb = np.clip(pa + 0.05 * y + rng.normal(0, 0.02, n), 0, 1).astype(np.float32)
    ids = np.arange(n) * 3 + 1
    perm = rng.permutation(n)
    m = _Precision()
    sa = arm_stats(
        m, Columns(pa, y, sample_ids=ids), name="m", cluster=None, bootstrap_replicates=60
    )
    sb = arm_stats(
        m,
        Columns(pb[perm], y[perm], sample_ids=ids[perm]),
        name="m",
        cluster=None,
        bootstrap_replicates=60,
    )
    assert sa.method == "poisson-bootstrap" and sa.n_units == n and sa.replicates.size == 60
    hit = pa > 0.5
    assert sa.value == pytest.approx((hit * y).sum() / hit.sum(), rel=1e-12)
    d = compare_arms(sa, sb)
    assert d.paired and d.se < 0.5 * math.sqrt(sa.se**2 + sb.se**2)
    assert d.se == pytest.approx(np.std(sb.replicates - sa.replicates, ddof=1), rel=1e-12)
    # replicate weights depend only on (unit, replicate): the same in both arms
    assert np.array_equal(poisson_counts(ids, 7), poisson_counts(ids[perm], 7)[np.argsort(perm)])


def test_recall_bootstrap_pairs_and_matches_metric_replicates() -> None:
    rng = np.random.default_rng(16)
    n = 500
    preds = rng.uniform(size=(n, 6)).astype(np.float32)
    target = (rng.uniform(size=(n, 6)) < 0.3).astype(np.float32)
    ids = np.arange(n)
    m = RecallAtK(top_k=2)
    s = arm_stats(
        m, Columns(preds, target, sample_ids=ids), name="r", cluster=None, bootstrap_replicates=25
    )
    # each replicate equals the metric recomputed on the Poisson-resampled rows
    for b in (0, 7, 24):
        rows = np.repeat(ids, poisson_counts(ids, b))
        ref = RecallAtK(top_k=2)
        ref.update(torch.from_numpy(preds[rows]), torch.from_numpy(target[rows]))
        assert s.replicates[b] == pytest.approx(float(ref.compute()), rel=1e-12)
    s2 = arm_stats(
        m,
        Columns(preds * 0.9 + 0.1 * target, target, sample_ids=ids),
        name="r",
        cluster=None,
        bootstrap_replicates=25,
    )
    d = compare_arms(s, s2)
    assert d.paired and d.verdict == "better"


def test_multiclass_auc_delong_written_out() -> None:
    rng = np.random.default_rng(17)
    n, c = 400, 3
    y = rng.integers(0, c, n)
    p = rng.dirichlet(np.ones(c), n)
    p[np.arange(n), y] += 0.3
    p = (p / p.sum(1, keepdims=True)).astype(np.float32)
    for average in ("macro", "weighted"):
        psi = np.zeros(n)
        vals, wts = [], []
        for k in range(c):
            pos, neg = y == k, y != k
            x, z = p[pos, k][:, None], p[neg, k][None, :]
            kern = (x > z) + 0.5 * (x == z)
            auc = kern.mean()
            psi_k = np.zeros(n)
            psi_k[pos] = n / pos.sum() * (kern.mean(1) - auc)
            psi_k[neg] = n / neg.sum() * (kern.mean(0) - auc)
            wk = 1.0 if average == "macro" else pos.sum()
            vals.append(auc)
            wts.append(wk)
            psi += wk * psi_k
        psi /= np.sum(wts)
        value = np.dot(wts, vals) / np.sum(wts)
        var = np.var(psi, ddof=1) / n
        m = MulticlassAUC(thresholds=0, average=average)
        s = arm_stats(m, Columns(p, y), name="m", cluster=None)
        assert s.method == "delong"
        assert s.value == pytest.approx(value, rel=1e-12)
        assert s.se**2 == pytest.approx(var, rel=1e-9)


def test_recall_bootstrap_clustered() -> None:
    rng = np.random.default_rng(7)
    n = 800
    users = rng.integers(0, 60, n)
    preds = rng.uniform(size=(n, 5)).astype(np.float32)
    target = rng.integers(0, 5, n)
    s = arm_stats(
        RecallAtK(top_k=2),
        Columns(preds, target, keys={"user_id": users}),
        name="r",
        cluster="user_id",
        bootstrap_replicates=40,
    )
    assert s.method == "poisson-bootstrap" and s.cluster == "user_id" and s.n_units == 60
    # binomial SE of a recall near 0.4 on 800 rows is about 0.017
    assert 0.008 < s.se < 0.04


def test_verdict_direction_and_sequential() -> None:
    a = ArmStats("ne", 0.80, 0.002, "delta", None, 50_000)
    b = ArmStats("ne", 0.79, 0.002, "delta", None, 50_000)
    assert compare_arms(a, b, higher_is_better=False).verdict == "better"
    assert compare_arms(a, b, higher_is_better=True).verdict == "worse"
    assert compare_arms(a, a).verdict == "inconclusive"
    fixed = compare_arms(a, b, higher_is_better=False)
    seq = compare_arms(a, b, higher_is_better=False, sequential=True, horizon=50_000)
    assert seq.high - seq.low > fixed.high - fixed.low
    se = math.sqrt(2) * 0.002
    assert seq.high - seq.delta == pytest.approx(cs_half_width(se, 50_000, 0.05, 50_000))
    assert seq.p_value == pytest.approx(always_valid_p_value(-0.01, se, 50_000, 0.05, 50_000))
    assert seq.p_value > fixed.p_value


def test_sequential_p_value_consistent_with_the_sequence() -> None:
    rng = np.random.default_rng(8)
    for _ in range(200):
        se = rng.uniform(0.001, 0.1)
        t = int(rng.integers(10, 10**6))
        h = int(rng.integers(1, 10**6))
        alpha = rng.uniform(0.001, 0.5)
        est = rng.normal(0, 4 * se)
        hw = cs_half_width(se, t, alpha, h)
        p = always_valid_p_value(est, se, t, alpha, h)
        assert (p <= alpha) == (abs(est) > hw)


def test_interval_shapes() -> None:
    s = ArmStats("auc", 0.75, 0.01, "delong", None, 1000)
    _lo, hi = interval(s, alpha=0.1)
    assert hi - 0.75 == pytest.approx(norm.ppf(0.95) * 0.01)
    assert interval(ArmStats("auc", 0.75, None, "none", None, 0)) is None
    assert interval(ArmStats("auc", math.nan, 0.01, "delong", None, 10)) is None
    _lo2, hi2 = interval(s, sequential=True)  # default horizon
    assert hi2 - 0.75 == pytest.approx(cs_half_width(0.01, 1000, 0.05, DEFAULT_HORIZON))


@pytest.mark.parametrize("alpha", [0.0, -0.1, 0.51, 1.0, float("nan"), "x"])
def test_bad_alpha(alpha) -> None:
    s = ArmStats("auc", 0.75, 0.01, "delong", None, 1000)
    with pytest.raises(ValueError, match="alpha") as err:
        interval(s, alpha=alpha)
    assert err.value.field == "alpha"
    with pytest.raises(StatsInputError, match="alpha"):
        compare_arms(s, s, alpha=alpha)


@pytest.mark.parametrize("horizon", [0, -5, 2.5, "10", True])
def test_bad_horizon(horizon) -> None:
    s = ArmStats("auc", 0.75, 0.01, "delong", None, 1000)
    with pytest.raises(StatsInputError, match="horizon") as err:
        interval(s, sequential=True, horizon=horizon)
    assert err.value.field == "horizon"
    with pytest.raises(ValueError, match="horizon"):
        compare_arms(s, s, sequential=True, horizon=horizon)


def test_unknown_cluster_column() -> None:
    cols = Columns(np.array([0.1, 0.9, 0.3]), np.array([0, 1, 1]), keys={"user_id": [1, 2, 3]})
    with pytest.raises(StatsInputError, match="cluster: no key column 'session'") as err:
        arm_stats(AUC(thresholds=0), cols, name="auc", cluster="session")
    assert err.value.field == "cluster"


def test_bad_columns() -> None:
    with pytest.raises(ValueError, match="sample_ids") as err:
        Columns(np.zeros(3), np.zeros(3), sample_ids=np.arange(4))
    assert err.value.field == "sample_ids"
    with pytest.raises(ValueError, match="sample_ids must be integers"):
        Columns(np.zeros(3), np.zeros(3), sample_ids=np.zeros(3))
    with pytest.raises(ValueError, match="target"):
        Columns(np.zeros(3), np.zeros(2))


def test_degenerate_inputs_give_no_interval() -> None:
    one_class = arm_stats(
        AUC(thresholds=0), Columns(np.array([0.1, 0.2]), np.array([1, 1])), name="a", cluster=None
    )
    assert math.isnan(one_class.value) and one_class.se is None and interval(one_class) is None
    d = compare_arms(one_class, one_class)
    assert d.delta is None and d.verdict == "inconclusive"
    tiny = arm_stats(
        XAUC(), Columns(np.array([0.1, 0.2]), np.array([1.0, 2.0])), name="x", cluster=None
    )
    assert tiny.se is None or math.isfinite(tiny.se)


def test_higher_is_better() -> None:
    from rankboard.service.metrics import MeanAbsoluteError

    assert higher_is_better(AUC(thresholds=0)) and higher_is_better(GroupedAUC("u"))
    assert not higher_is_better(NormalizedEntropy())
    assert not higher_is_better(MeanSquaredError()) and not higher_is_better(MeanAbsoluteError())


def test_compute_interval_from_state() -> None:
    rng = np.random.default_rng(9)
    y = rng.integers(0, 2, 3000)
    p = np.clip(rng.normal(0.4 + 0.2 * y, 0.2), 0, 1).astype(np.float32)
    exact = AUC(thresholds=0)
    exact.update(torch.from_numpy(p[:1000]), torch.from_numpy(y[:1000]))
    exact.update(torch.from_numpy(p[1000:]), torch.from_numpy(y[1000:]))
    value, _lo, hi = exact.compute_interval(alpha=0.05)
    ref = arm_stats(AUC(thresholds=0), Columns(p, y), name="a", cluster=None)
    assert value == pytest.approx(float(exact.compute()), rel=1e-12)
    assert hi - value == pytest.approx(1.959963984540054 * ref.se, rel=1e-9)
    # binned: from the histogram alone, the same as DeLong on the bucket indices
    try:
        binned = AUC(bins=20)
    except TypeError:
        binned = AUC(thresholds=20)
    binned.update(torch.from_numpy(p), torch.from_numpy(y))
    v2, _lo2, hi2 = binned.compute_interval()
    ref2 = arm_stats(binned, Columns(p, y), name="a", cluster=None)
    assert v2 == pytest.approx(ref2.value, rel=1e-12)
    assert hi2 - v2 == pytest.approx(1.959963984540054 * ref2.se, rel=1e-9)
    g = GroupedAUC(grouping_key="user_id")
    g.update(
        torch.from_numpy(p),
        torch.from_numpy(y),
        grouping_key=torch.from_numpy(np.arange(3000) % 50),
    )
    assert g.compute_interval(cluster_key="user_id") is not None
    with pytest.raises(ValueError, match="cluster"):
        g.compute_interval(cluster_key="country")
    ne = NormalizedEntropy()
    ne.update(torch.from_numpy(p), torch.from_numpy(y))
    with pytest.raises(ValueError, match="arm_stats"):
        ne.compute_interval()


def test_train_metrics_have_no_interval() -> None:
    from rankboard.service.metrics import DecayAUC, TrainMetricWrapper

    p = torch.tensor([0.1, 0.8, 0.4, 0.6])
    y = torch.tensor([0, 1, 0, 1])
    decay = DecayAUC(thresholds=10)
    decay.update(p, y)
    decay.decay(0.9)
    wrapped = TrainMetricWrapper(NormalizedEntropy(), decay_step=1)
    wrapped.update(p, y)
    for m in (decay, wrapped):
        s = arm_stats(m, Columns(p, y), name="train", cluster=None)
        assert (s.method, s.se, s.cluster) == ("none", None, None)
        assert s.value == pytest.approx(float(m.compute()), nan_ok=True)
        assert interval(s) is None
    assert not higher_is_better(wrapped) and higher_is_better(decay)
