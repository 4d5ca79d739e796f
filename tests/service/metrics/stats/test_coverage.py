"""Monte Carlo coverage of the 95 % intervals, seeded, against known truths (sims.py).

Replicates: 1000 for the cheap simulations, where the 93-97 % band is +-2.9 Monte Carlo
standard errors (sqrt(.95 * .05 / 1000) = 0.69 %); 400 for the costlier clustered ones,
where the band is widened to 92-98 % (+-2.8 SE at 1.09 %) for the same safety. The
benchmark (benchmarks/bench_stats.py) runs 1000+ replicates of every row.
"""

from __future__ import annotations

import numpy as np
import pytest

import tests.service.metrics.stats.sims as sims


def _coverage(sim, reps: int, seed: int, **kw) -> float:
    rng = np.random.default_rng(seed)
    hits = 0
    for _ in range(reps):
        truth, s = sim(rng, **kw)
        lo, hi = (s.low, s.high) if hasattr(s, "low") else _iv(s)
        hits += sims.covered(truth, lo, hi)
    return hits / reps


def _iv(s):
    from rankboard.service.metrics.stats import interval

    iv = interval(s)
    return (None, None) if iv is None else iv


@pytest.mark.parametrize(
    ("sim", "reps", "band"),
    [
        ("sim_auc", 1000, (0.93, 0.97)),
        ("sim_xauc", 1000, (0.93, 0.97)),
        ("sim_mse", 1000, (0.93, 0.97)),
        ("sim_gauc", 400, (0.92, 0.98)),
        ("sim_auc_users", 400, (0.92, 0.98)),
        ("sim_ne_users", 400, (0.92, 0.98)),
        ("sim_gxauc", 400, (0.92, 0.98)),
        ("sim_recall", 400, (0.92, 0.98)),
    ],
)
def test_interval_coverage(sim: str, reps: int, band: tuple[float, float]) -> None:
    cov = _coverage(getattr(sims, sim), reps, seed=11)
    assert band[0] <= cov <= band[1], f"{sim}: coverage {cov:.3f}"


@pytest.mark.parametrize("sim", ["sim_auc_users", "sim_ne_users"])
def test_ignoring_the_cluster_under_covers(sim: str) -> None:
    cov = _coverage(getattr(sims, sim), 300, seed=12, cluster=None)
    assert cov < 0.85, f"{sim} without clustering: coverage {cov:.3f}"


@pytest.mark.parametrize(("paired", "band"), [(True, (0.93, 0.97)), (False, (0.93, 0.97))])
def test_delta_coverage(paired: bool, band: tuple[float, float]) -> None:
    rng = np.random.default_rng(13)
    hits = 0
    reps = 1000
    for _ in range(reps):
        truth, d = sims.sim_delta_auc(rng, paired=paired)
        assert d.paired == paired
        hits += sims.covered(truth, d.low, d.high)
    assert band[0] <= hits / reps <= band[1], hits / reps


@pytest.mark.parametrize("paired", [True, False])
def test_aa_inconclusive_rate(paired: bool) -> None:
    rng = np.random.default_rng(14)
    reps = 1000
    inconclusive = 0
    for _ in range(reps):
        _, d = sims.sim_delta_auc(rng, mu_a=1.0, mu_b=1.0, paired=paired)
        inconclusive += d.verdict == "inconclusive"
    assert 0.93 <= inconclusive / reps <= 0.97, inconclusive / reps
