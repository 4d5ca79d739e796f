"""Benchmark of the A/B statistics layer (issue 11): coverage, peeking, power and speed.

    .venv/bin/python benchmarks/bench_stats.py            # full size (minutes on 2 cores)
    .venv/bin/python benchmarks/bench_stats.py --quick    # small sizes, about a minute

Prints one JSON object on stdout (progress bars go to stderr):

* ``coverage``: share of seeded replicates whose 95 % interval covers the known truth
  (simulations of tests/service/metrics/stats/sims.py), target 0.93-0.97; the rows
  ``*_no_cluster`` are the same data with the cluster ignored (they must under-cover);
  ``aa_*_inconclusive`` the share of A/A comparisons judged inconclusive (target 0.93-0.97);
* ``peeking``: an A/A stream checked at ``--looks`` looks: the share of experiments declared
  different at some look, fixed-horizon vs sequential (target <= 0.05); and one arm's
  stream: the share whose interval misses the true AUC at some look;
* ``power``: paired vs unpaired p-value for a true ΔAUC of 0.002 on a shared eval set of
  ``--power-n`` samples (3 % positives);
* ``speed``: ``arm_stats`` time against the point metric's update + compute on
  ``--speed-n`` samples / ``--speed-users`` users (target ratio <= 2), and a paired compare
  of two arms of that size (both arms' statistics and the comparison; target < 10 s).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import pathlib
import sys
import time

import numpy as np
import torch
from scipy.stats import norm
from tqdm import tqdm

from rankboard.service.metrics import AUC, XAUC, GroupedAUC, NormalizedEntropy
from rankboard.service.metrics.stats import Columns, arm_stats, compare_arms, interval

_SIMS = pathlib.Path(__file__).resolve().parents[1] / "tests/service/metrics/stats/sims.py"
_spec = importlib.util.spec_from_file_location("stats_sims", _SIMS)
sims = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(sims)


def _bar(total: int, desc: str) -> tqdm:
    return tqdm(total=total, desc=desc, file=sys.stderr, mininterval=1, leave=False)


def coverage(reps: int, seed: int) -> dict[str, float]:
    rows = {
        "auc_binormal": (sims.sim_auc, {}),
        "auc_users_clustered": (sims.sim_auc_users, {}),
        "auc_users_no_cluster": (sims.sim_auc_users, {"cluster": None}),
        "gauc_users": (sims.sim_gauc, {}),
        "ne_users_clustered": (sims.sim_ne_users, {}),
        "ne_users_no_cluster": (sims.sim_ne_users, {"cluster": None}),
        "xauc": (sims.sim_xauc, {}),
        "mse": (sims.sim_mse, {}),
        "gxauc_users": (sims.sim_gxauc, {}),
        "recall_at_3_bootstrap": (sims.sim_recall, {}),
    }
    out: dict[str, float] = {}
    with _bar(reps * (len(rows) + 4), "coverage") as bar:
        for name, (sim, kw) in rows.items():
            rng = np.random.default_rng(seed)
            hits = 0
            for _ in range(reps):
                truth, s = sim(rng, **kw)
                iv = interval(s)
                hits += iv is not None and iv[0] <= truth <= iv[1]
                bar.update()
            out[name] = hits / reps
        for paired in (True, False):
            rng = np.random.default_rng(seed)
            hits = 0
            for _ in range(reps):
                truth, d = sims.sim_delta_auc(rng, paired=paired)
                hits += sims.covered(truth, d.low, d.high)
                bar.update()
            out[f"delta_auc_{'paired' if paired else 'unpaired'}"] = hits / reps
        for paired in (True, False):
            rng = np.random.default_rng(seed)
            inc = 0
            for _ in range(reps):
                _, d = sims.sim_delta_auc(rng, mu_a=1.0, mu_b=1.0, paired=paired)
                inc += d.verdict == "inconclusive"
                bar.update()
            out[f"aa_{'paired' if paired else 'unpaired'}_inconclusive"] = inc / reps
    return out


def peeking(reps: int, looks: int, per_look: int, seed: int) -> dict[str, float]:
    rng = np.random.default_rng(seed)
    n = looks * per_look
    fixed = seq = 0
    for _ in tqdm(range(reps), desc="peeking", file=sys.stderr, mininterval=1, leave=False):
        f, s = sims.aa_peeking(rng, looks, per_look)
        fixed += f
        seq += s
    # one arm's AUC stream: does the interval miss the truth Φ(1/√2) at some look?
    miss_fixed = miss_seq = 0
    for _ in tqdm(
        range(reps), desc="peeking, one arm", file=sys.stderr, mininterval=1, leave=False
    ):
        f, s = sims.one_arm_peeking(rng, looks, per_look)
        miss_fixed += f
        miss_seq += s
    return {
        "looks": looks,
        "samples_per_arm": n,
        "replicates": reps,
        "fixed_false_positive": fixed / reps,
        "sequential_false_positive": seq / reps,
        "one_arm_fixed_misses_truth": miss_fixed / reps,
        "one_arm_sequential_misses_truth": miss_seq / reps,
    }


def power(n: int, seed: int) -> dict[str, object]:
    """Two models scoring one eval set; B's true AUC is A's + 0.002."""
    rng = np.random.default_rng(seed)
    y = (rng.uniform(size=n) < 0.03).astype(np.int64)
    mu_a = 1.0
    target = norm.cdf(mu_a / math.sqrt(2)) + 0.002
    mu_b = math.sqrt(2) * norm.ppf(target)
    e = rng.normal(size=n)
    rho = 0.95
    eb = rho * e + math.sqrt(1 - rho * rho) * rng.normal(size=n)
    pa = (mu_a * y + e).astype(np.float32)
    pb = (mu_b * y + eb).astype(np.float32)
    ids = np.arange(n, dtype=np.int64)
    m = AUC(thresholds=0)
    a = arm_stats(m, Columns(pa, y, sample_ids=ids), name="auc", cluster=None)
    b = arm_stats(m, Columns(pb, y, sample_ids=ids), name="auc", cluster=None)
    paired = compare_arms(a, b)
    a_u = arm_stats(m, Columns(pa, y), name="auc", cluster=None)
    b_u = arm_stats(m, Columns(pb, y), name="auc", cluster=None)
    unpaired = compare_arms(a_u, b_u)
    return {
        "samples": n,
        "positives": int(y.sum()),
        "true_delta_auc": 0.002,
        "observed_delta": paired.delta,
        "paired": {"se": paired.se, "p_value": paired.p_value, "verdict": paired.verdict},
        "unpaired": {"se": unpaired.se, "p_value": unpaired.p_value, "verdict": unpaired.verdict},
    }


def _timed_cpu(fn):
    """``(result, wall seconds, CPU seconds of this process)``: on a shared machine the
    CPU time is the steadier figure."""
    c0, t0 = time.process_time(), time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0, time.process_time() - c0


def speed(n: int, users: int, seed: int, skip: set[str]) -> dict[str, object]:
    rng = np.random.default_rng(seed)
    u = rng.integers(0, users, n).astype(np.int64)
    y = (rng.uniform(size=n) < 0.3).astype(np.float32)
    p = (1 / (1 + np.exp(-(y + rng.normal(0, 1, n))))).astype(np.float32)
    watch = rng.exponential(1.0, n).astype(np.float32)
    ids = np.arange(n, dtype=np.int64)
    out: dict[str, object] = {"samples": n, "users": users}
    cases = [
        ("auc", AUC(thresholds=0), y, "user_id"),
        ("gauc", GroupedAUC(grouping_key="user_id"), y, None),
        ("xauc", XAUC(), watch, None),
        ("ne", NormalizedEntropy(), y, "user_id"),
    ]
    cases = [c for c in cases if f"speed-{c[0]}" not in skip]
    for name, metric, target, cluster in tqdm(cases, desc="speed", file=sys.stderr, leave=False):
        kw = {"grouping_key": torch.from_numpy(u)} if metric.needs_grouping_key else {}

        def point(metric=metric, target=target, kw=kw):
            metric.reset()
            metric.update(torch.from_numpy(p), torch.from_numpy(target), **kw)
            return float(metric.compute())

        value, t_point, c_point = _timed_cpu(point)
        cols = Columns(p, target, keys={"user_id": u}, sample_ids=ids)
        s, t_stats, c_stats = _timed_cpu(
            lambda m=metric, c=cols, cl=cluster: arm_stats(m, c, name="m", cluster=cl)
        )
        assert s.value == value or abs(s.value - value) <= 1e-12 * abs(value), (
            name,
            s.value,
            value,
        )
        out[name] = {
            "point_s": round(t_point, 3),
            "stats_s": round(t_stats, 3),
            "ratio": round(t_stats / t_point, 2),
            "point_cpu_s": round(c_point, 3),
            "stats_cpu_s": round(c_stats, 3),
            "cpu_ratio": round(c_stats / c_point, 2),
            "method": s.method,
            "cluster": s.cluster,
            "units": s.n_units,
            "se": s.se,
        }
    p2 = np.clip(p + rng.normal(0, 0.05, n).astype(np.float32), 0, 1)
    perm = rng.permutation(n)
    metric = AUC(thresholds=0)

    def paired_compare():
        a = arm_stats(
            metric,
            Columns(p, y, keys={"user_id": u}, sample_ids=ids),
            name="auc",
            cluster="user_id",
        )
        b = arm_stats(
            metric,
            Columns(p2[perm], y[perm], keys={"user_id": u[perm]}, sample_ids=ids[perm]),
            name="auc",
            cluster="user_id",
        )
        return compare_arms(a, b)

    d, t_cmp, c_cmp = _timed_cpu(paired_compare)
    out["paired_compare_auc_clustered"] = {
        "seconds": round(t_cmp, 2),
        "cpu_seconds": round(c_cmp, 2),
        "pairing": d.pairing,
        "se": d.se,
    }
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small sizes (about a minute)")
    ap.add_argument("--reps", type=int, default=None, help="coverage replicates (1000)")
    ap.add_argument("--peek-reps", type=int, default=None, help="peeking replicates (1000)")
    ap.add_argument("--looks", type=int, default=20)
    ap.add_argument("--per-look", type=int, default=100, help="samples per arm per look")
    ap.add_argument("--power-n", type=int, default=None, help="power eval set (1M)")
    ap.add_argument("--speed-n", type=int, default=None, help="speed samples (10M)")
    ap.add_argument("--speed-users", type=int, default=None, help="speed users (1M)")
    ap.add_argument(
        "--skip",
        default="",
        help="comma list of parts to skip: coverage, peeking, power, speed, speed-auc, "
        "speed-gauc, speed-xauc, speed-ne",
    )
    ap.add_argument("--seed", type=int, default=2026)
    args = ap.parse_args(argv)
    q = args.quick
    reps = args.reps or (200 if q else 1000)
    peek_reps = args.peek_reps or (200 if q else 1000)
    power_n = args.power_n or 1_000_000
    speed_n = args.speed_n or (1_000_000 if q else 10_000_000)
    speed_users = args.speed_users or speed_n // 10
    skip = set(filter(None, args.skip.split(",")))
    result: dict[str, object] = {"quick": q}
    t0 = time.perf_counter()
    if "coverage" not in skip:
        result["coverage"] = {"replicates": reps, **coverage(reps, args.seed)}
    if "peeking" not in skip:
        result["peeking"] = peeking(peek_reps, args.looks, args.per_look, args.seed)
    if "power" not in skip:
        result["power"] = power(power_n, args.seed)
    if "speed" not in skip:
        result["speed"] = speed(speed_n, speed_users, args.seed, skip)
    result["total_seconds"] = round(time.perf_counter() - t0, 1)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
