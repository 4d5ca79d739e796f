"""Seeded simulations with known truth, shared by the coverage tests and the benchmark.

Each ``sim_*`` draws one replicate and returns ``(truth, ArmStats or Delta)``. The truths:

* AUC, binormal: positives ``N(μ, 1)``, negatives ``N(0, 1)``: ``AUC = Φ(μ / √2)``.
* AUC with users: ``score = μ y + b_u y + c_u (1 - y) + e``, the user's positives shifted
  by ``b_u``, its negatives by ``c_u`` (both ``N(0, σ²)``, independent): a positive minus a
  negative is ``N(μ, 2 + 2σ²)`` within and across users, so ``AUC = Φ(μ / √(2 + 2σ²))``.
* GAUC with per-user lift ``μ_u ~ N(μ, τ²)``: ``E Φ(μ_u / √2) = Φ(μ / √(2 + τ²))``.
* NE with user types (rate ``q``, prediction ``p``) drawn per user: truth
  ``E[logloss] / H(E[q])`` over the type mix.
* XAUC of a bivariate normal with correlation ``r``: ``1/2 + arcsin(r) / π``.
* MSE of ``p = t + e``, ``e ~ N(0, σ²)``: ``σ²``.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.stats import norm

from rankboard.service.metrics import (
    AUC,
    XAUC,
    GroupedAUC,
    GroupedXAUC,
    MeanSquaredError,
    NormalizedEntropy,
    RecallAtK,
)
from rankboard.service.metrics.stats import Columns, arm_stats, compare_arms, interval

AUC_EXACT = AUC(thresholds=0)
NE = NormalizedEntropy()
MSE = MeanSquaredError()
XAUC_EXACT = XAUC()
GAUC = GroupedAUC(grouping_key="user_id")


def sim_auc(rng: np.random.Generator, n: int = 400, mu: float = 1.0):
    y = rng.integers(0, 2, n)
    p = (mu * y + rng.normal(0, 1, n)).astype(np.float32)
    return norm.cdf(mu / math.sqrt(2)), arm_stats(
        AUC_EXACT, Columns(p, y), name="auc", cluster=None
    )


def _users(rng: np.random.Generator, users: int, per_user: int) -> np.ndarray:
    return np.repeat(np.arange(users) * 7919 + 3, per_user)


def sim_auc_users(
    rng: np.random.Generator,
    users: int = 100,
    per_user: int = 10,
    mu: float = 1.0,
    sd_user: float = 1.0,
    cluster: str | None = "user_id",
):
    u = _users(rng, users, per_user)
    n = u.size
    y = rng.integers(0, 2, n)
    b = rng.normal(0, sd_user, users).repeat(per_user)  # shifts the user's positives
    c = rng.normal(0, sd_user, users).repeat(per_user)  # shifts the user's negatives
    p = (mu * y + np.where(y == 1, b, c) + rng.normal(0, 1, n)).astype(np.float32)
    truth = norm.cdf(mu / math.sqrt(2 + 2 * sd_user**2))
    s = arm_stats(AUC_EXACT, Columns(p, y, keys={"user_id": u}), name="auc", cluster=cluster)
    return truth, s


def sim_gauc(
    rng: np.random.Generator,
    users: int = 150,
    per_user: int = 8,
    mu: float = 0.8,
    tau: float = 1.0,
):
    u = _users(rng, users, per_user)
    n = u.size
    y = rng.integers(0, 2, n)
    lift = rng.normal(mu, tau, users).repeat(per_user)
    base = rng.normal(0, 2.0, users).repeat(per_user)  # a strong user effect on scores
    p = (lift * y + base + rng.normal(0, 1, n)).astype(np.float32)
    truth = norm.cdf(mu / math.sqrt(2 + tau**2))
    return truth, arm_stats(GAUC, Columns(p, y, keys={"user_id": u}), name="gauc", cluster=None)


# user types: (true rate q, predicted probability p)
_NE_TYPES = np.array([[0.05, 0.08], [0.3, 0.25], [0.7, 0.6]])


def ne_truth() -> float:
    q, p = _NE_TYPES[:, 0], _NE_TYPES[:, 1]
    loss = np.mean(-(q * np.log(p) + (1 - q) * np.log(1 - p)))
    r = q.mean()
    return float(loss / -(r * math.log(r) + (1 - r) * math.log(1 - r)))


def sim_ne_users(
    rng: np.random.Generator,
    users: int = 100,
    per_user: int = 20,
    cluster: str | None = "user_id",
):
    u = _users(rng, users, per_user)
    kind = rng.integers(0, 3, users).repeat(per_user)
    q, p = _NE_TYPES[kind, 0], _NE_TYPES[kind, 1]
    y = (rng.uniform(size=u.size) < q).astype(np.float32)
    cols = Columns(p.astype(np.float32), y, keys={"user_id": u})
    return ne_truth(), arm_stats(NE, cols, name="ne", cluster=cluster)


def sim_xauc(rng: np.random.Generator, n: int = 300, r: float = 0.5):
    t = rng.normal(size=n)
    p = r * t + math.sqrt(1 - r * r) * rng.normal(size=n)
    truth = 0.5 + math.asin(r) / math.pi
    cols = Columns(p.astype(np.float32), t.astype(np.float32))
    return truth, arm_stats(XAUC_EXACT, cols, name="xauc", cluster=None)


def sim_mse(rng: np.random.Generator, n: int = 1000, sd: float = 1.0):
    """Squared normal errors are skewed (chi-square): at n = 300 the normal interval
    covers about 93.5 %, at n = 1000 about 95 % (measured over 6000 replicates)."""
    t = rng.normal(size=n)
    p = t + rng.normal(0, sd, n)
    return sd * sd, arm_stats(MSE, Columns(p, t), name="mse", cluster=None)


def sim_delta_auc(
    rng: np.random.Generator,
    n: int = 600,
    mu_a: float = 1.0,
    mu_b: float = 1.2,
    rho: float = 0.8,
    paired: bool = True,
    **kw,
):
    """Two models; paired: scored on one shared eval set (errors correlated by ``rho``);
    unpaired: on two independent eval sets, without sample ids."""
    truth = norm.cdf(mu_b / math.sqrt(2)) - norm.cdf(mu_a / math.sqrt(2))
    y = rng.integers(0, 2, n)
    e = rng.normal(size=n)
    ea = e
    eb = rho * e + math.sqrt(1 - rho * rho) * rng.normal(size=n)
    if paired:
        ids = np.arange(n)
        ya = yb = y
    else:
        ids = None
        ya, yb = y, rng.integers(0, 2, n)
        eb = rng.normal(size=n)
    a = arm_stats(
        AUC_EXACT,
        Columns((mu_a * ya + ea).astype("f4"), ya, sample_ids=ids),
        name="auc",
        cluster=None,
    )
    b = arm_stats(
        AUC_EXACT,
        Columns((mu_b * yb + eb).astype("f4"), yb, sample_ids=ids),
        name="auc",
        cluster=None,
    )
    return truth, compare_arms(a, b, **kw)


def covered(truth: float, low: float | None, high: float | None) -> bool:
    return low is not None and low <= truth <= high


_GX_R = np.array([0.2, 0.5, 0.8])
GXAUC = GroupedXAUC(grouping_key="user_id")
RECALL = RecallAtK(top_k=3)


def sim_gxauc(rng: np.random.Generator, users: int = 150, max_per_user: int = 12):
    """Grouped XAUC: per user a correlation r_u from {0.2, 0.5, 0.8} and 1..12 samples
    (bivariate normal); each user's XAUC is unbiased for 1/2 + arcsin(r_u)/π, the sizes are
    independent of r_u, so the size-weighted mean targets 1/2 + mean(arcsin r)/π."""
    sizes = rng.integers(1, max_per_user + 1, users)
    u = np.repeat(np.arange(users) * 13 + 1, sizes)
    r = _GX_R[rng.integers(0, 3, users)].repeat(sizes)
    t = rng.normal(size=u.size)
    p = r * t + np.sqrt(1 - r * r) * rng.normal(size=u.size)
    truth = 0.5 + float(np.mean(np.arcsin(_GX_R))) / math.pi
    cols = Columns(p.astype(np.float32), t.astype(np.float32), keys={"user_id": u})
    return truth, arm_stats(GXAUC, cols, name="gxauc", cluster=None)


def sim_recall(rng: np.random.Generator, n: int = 600, classes: int = 10, q: float = 0.4):
    """Recall@3 with one relevant class per row, ranked in the top 3 with probability q."""
    target = rng.integers(0, classes, n)
    scores = rng.uniform(0.0, 0.5, (n, classes))
    hit = rng.uniform(size=n) < q
    scores[np.arange(n), target] = np.where(hit, 0.9, -0.1)
    cols = Columns(scores.astype(np.float32), target)
    return q, arm_stats(RECALL, cols, name="recall", cluster=None)


def aa_peeking(rng: np.random.Generator, looks: int, per_look: int) -> tuple[bool, bool]:
    """One A/A AUC stream checked at ``looks`` looks: (a fixed-horizon verdict ever said
    "different", a sequential one ever did). The sequential p-value and verdict agree."""
    n = looks * per_look
    metric = AUC(thresholds=0)
    arms = []
    for _ in range(2):
        y = rng.integers(0, 2, n)
        arms.append(((y + rng.normal(0, 1, n)).astype(np.float32), y))
    fixed = seq = False
    for look in range(1, looks + 1):
        m = look * per_look
        a, b = (arm_stats(metric, Columns(p[:m], y[:m]), name="auc", cluster=None) for p, y in arms)
        fixed |= compare_arms(a, b).verdict != "inconclusive"
        d = compare_arms(a, b, sequential=True, horizon=n)
        seq |= d.verdict != "inconclusive"
        assert d.p_value is not None and (d.p_value <= 0.05) == (d.verdict != "inconclusive")
    return fixed, seq


def one_arm_peeking(rng: np.random.Generator, looks: int, per_look: int) -> tuple[bool, bool]:
    """One arm's binormal AUC stream (truth Φ(1/√2)) checked at ``looks`` looks: (the fixed
    interval ever missed the truth, the confidence sequence ever did)."""
    truth = float(norm.cdf(1 / np.sqrt(2)))
    n = looks * per_look
    metric = AUC(thresholds=0)
    y = rng.integers(0, 2, n)
    p = (y + rng.normal(0, 1, n)).astype(np.float32)
    fixed = seq = False
    for look in range(1, looks + 1):
        m = look * per_look
        st = arm_stats(metric, Columns(p[:m], y[:m]), name="auc", cluster=None)
        fixed |= not covered(truth, *(interval(st) or (None, None)))
        seq |= not covered(truth, *(interval(st, sequential=True, horizon=n) or (None, None)))
    return fixed, seq
