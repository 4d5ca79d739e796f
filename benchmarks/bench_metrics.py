"""Benchmark of the metrics engine against straightforward references, in the same run.

    .venv/bin/python benchmarks/bench_metrics.py            # the figures of the README
    .venv/bin/python benchmarks/bench_metrics.py --quick    # small sizes, seconds

Prints times and ratios: GroupedAUC compute against a per-group sklearn loop (timed on a
fraction of the groups and scaled linearly, ``--ref-fraction 1`` for all of them, with
the values compared on the same groups), the 10M / 1M-group GroupedAUC compute, binned
DecayAUC update throughput against a samples x thresholds comparison, and exact XAUC
(time at 1M, equality with brute force at 5k), and the fused float64 sums of NE, MSE,
MAE and binary accuracy against the torch expressions they replaced (``--only sums``).

    .venv/bin/python benchmarks/bench_metrics.py --only sums gauc-big   # issue 17's figures
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
import torch
from sklearn.metrics import roc_auc_score
from tqdm import tqdm

from rankboard.service.metrics import (
    XAUC,
    Accuracy,
    DecayAUC,
    GroupedAUC,
    MeanSquaredError,
    NormalizedEntropy,
    RecallAtK,
)
from rankboard.service.metrics.functional._sums import (
    binary_correct_sums,
    error_sums,
    logloss_sums,
)


def _timed(fn, *args, **kwargs):
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - t0


def grouped_data(n: int, groups: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    p = np.round(rng.random(n), 3).astype(np.float32)  # ties
    y = (rng.random(n) < 0.3).astype(np.float32)
    g = rng.integers(0, groups, n)
    return p, y, g


def ref_grouped_auc(p, y, g, keep_groups=None):
    """Per-group loop with sklearn; returns (mean over valid groups, count)."""
    order = np.argsort(g, kind="stable")
    gs = g[order]
    bounds = np.flatnonzero(np.diff(gs)) + 1
    parts = np.split(order, bounds)
    if keep_groups is not None:
        parts = parts[:keep_groups]
    vals = []
    for idx in tqdm(parts, desc="reference per-group loop", leave=False, mininterval=1):
        yy = y[idx]
        if 0 < yy.sum() < len(yy):
            vals.append(roc_auc_score(yy, p[idx]))
    return float(np.mean(vals)), len(vals), len(parts)


def bench_grouped_auc(n: int, groups: int, ref_fraction: float) -> None:
    p, y, g = grouped_data(n, groups)
    m = GroupedAUC(grouping_key="g")
    m.update(torch.from_numpy(p), torch.from_numpy(y), grouping_key=torch.from_numpy(g))
    (value, count), ours = _timed(m.compute_with_count)
    total_groups = len(np.unique(g))
    keep = max(1, int(total_groups * ref_fraction))
    (ref_val, ref_count, used), ref_t = _timed(ref_grouped_auc, p, y, g, keep)
    ref_full = ref_t * total_groups / used
    # the value check on exactly the groups the reference saw
    sel = np.isin(g, np.unique(g)[:used])
    sub = GroupedAUC(grouping_key="g")
    sub.update(
        torch.from_numpy(p[sel]), torch.from_numpy(y[sel]), grouping_key=torch.from_numpy(g[sel])
    )
    sub_val, sub_count = sub.compute_with_count()
    diff = abs(sub_val.item() - ref_val)
    scaled = "" if used == total_groups else f" (scaled from {used} of {total_groups} groups)"
    print(
        f"GroupedAUC compute {n:,} samples / {total_groups:,} groups: {ours:.3f} s; "
        f"per-group sklearn loop {ref_full:.1f} s{scaled}; speed-up x{ref_full / ours:.0f}; "
        f"|diff| on compared groups {diff:.1e} ({sub_count.item()} == {ref_count} groups); "
        f"value {value.item():.6f} over {count.item():,} groups"
    )


def bench_grouped_auc_big(n: int, groups: int) -> None:
    p, y, g = grouped_data(n, groups, seed=1)
    m = GroupedAUC(grouping_key="g")
    m.update(torch.from_numpy(p), torch.from_numpy(y), grouping_key=torch.from_numpy(g))
    if not GroupedAUC.supports_weights:  # before per-sample weights on GroupedAUC
        (value, count), t = _timed(m.compute_with_count)
        print(
            f"GroupedAUC compute {n:,} samples / {groups:,} groups: {t:.2f} s "
            f"(value {value.item():.6f}, {count.item():,} groups)"
        )
        return
    w = np.random.default_rng(2).random(n).astype(np.float32)
    mw = GroupedAUC(grouping_key="g")
    mw.update(
        torch.from_numpy(p),
        torch.from_numpy(y),
        weights=torch.from_numpy(w),
        grouping_key=torch.from_numpy(g),
    )
    # interleaved, best of three each: this machine's load swings more than the ratio
    best = {"unweighted": math.inf, "weighted": math.inf}
    out = {}
    first = None
    for _ in range(3):
        for name, metric in (("unweighted", m), ("weighted", mw)):
            out[name], t = _timed(metric.compute_with_count)
            first = t if first is None else first
            best[name] = min(best[name], t)
    value, count = out["unweighted"]
    sort = bench_sort_baseline(n)
    print(
        f"GroupedAUC compute {n:,} samples / {groups:,} groups: {best['unweighted']:.2f} s "
        f"best of 3, first {first:.2f} s (x{best['unweighted'] / sort:.1f} of the sort; "
        f"value {value.item():.6f}, {count.item():,} groups)"
    )
    print(
        f"weighted GroupedAUC compute, same data: {best['weighted']:.2f} s "
        f"(x{best['weighted'] / best['unweighted']:.2f} of unweighted; "
        f"value {out['weighted'][0].item():.6f})"
    )


class RefBinnedAUC:
    """The comparison reference: a samples x thresholds comparison per update."""

    def __init__(self, thresholds: int) -> None:
        self.thr = torch.linspace(0, 1, thresholds)
        self.tp = torch.zeros(thresholds)
        self.fp = torch.zeros(thresholds)

    def update(self, preds, target):
        ge = (preds.unsqueeze(1) >= self.thr.unsqueeze(0)).float()
        self.tp += (ge * target.unsqueeze(1)).sum(0)
        self.fp += (ge * (1 - target.unsqueeze(1))).sum(0)


def bench_decay_update(batches: int, batch_size: int, ref_batches: int) -> None:
    gen = torch.Generator().manual_seed(0)
    data = [
        (
            torch.rand(batch_size, generator=gen),
            (torch.rand(batch_size, generator=gen) < 0.3).float(),
        )
        for _ in range(batches)
    ]
    rates = {}
    for label, kw in (("200 threshold points", {"thresholds": 200}), ("200 bins", {"bins": 200})):
        try:
            m = DecayAUC(**kw)
        except TypeError:  # before threshold points: thresholds meant equal-width bins
            if "bins" not in kw:
                continue
            m = DecayAUC(thresholds=200)
        for p, y in data[:20]:
            m.update(p, y)  # warm-up
        t0 = time.perf_counter()
        for p, y in tqdm(data, desc="DecayAUC.update", leave=False, mininterval=1):
            m.update(p, y)
        rates[label] = batches * batch_size / (time.perf_counter() - t0)
    ours = min(rates.values())
    ref = RefBinnedAUC(200)
    t0 = time.perf_counter()
    for p, y in data[:ref_batches]:
        ref.update(p, y)
    theirs = ref_batches * batch_size / (time.perf_counter() - t0)
    for label, rate in rates.items():
        print(f"DecayAUC update (batches of {batch_size}, {label}): {rate / 1e6:.1f}M samples/s")
    print(
        f"  samples x thresholds reference {theirs / 1e6:.2f}M samples/s; "
        f"slowest mode x{ours / theirs:.0f}"
    )


def bench_unweighted_updates(batches: int, batch_size: int) -> None:
    """Update throughput of metrics that gained weights: the unweighted path must not slow."""
    gen = torch.Generator().manual_seed(3)
    probs = [torch.rand(batch_size, generator=gen) for _ in range(batches)]
    labels = [(torch.rand(batch_size, generator=gen) < 0.3).float() for _ in range(batches)]
    scores = [torch.rand(batch_size, 20, generator=gen) for _ in range(batches)]
    ids = [torch.randint(0, 20, (batch_size,), generator=gen) for _ in range(batches)]
    cases = [
        ("Accuracy (binary)", Accuracy(), probs, labels),
        ("RecallAtK (20 classes, k=5)", RecallAtK(top_k=5), scores, ids),
        ("GroupedAUC (keeps samples)", GroupedAUC(grouping_key="g"), probs, labels),
        ("XAUC (keeps samples)", XAUC(), probs, labels),
    ]
    for name, m, xs, ys in cases:
        kw = (
            (lambda i: {"grouping_key": ids[i].to(torch.int64)})
            if m.needs_grouping_key
            else (lambda i: {})
        )
        t0 = time.perf_counter()
        for i in range(batches):
            m.update(xs[i], ys[i], **kw(i))
        rate = batches * batch_size / (time.perf_counter() - t0)
        print(f"{name} update, unweighted, batches of {batch_size}: {rate / 1e6:.1f}M samples/s")


def _torch_logloss_sums(preds, target, weights, eta):
    """The baseline: NE's sums as torch expressions on fresh float64 temporaries (the
    update before the fused kernel)."""
    p = preds.to(torch.float64).clamp(eta, 1.0 - eta)
    y = target.to(torch.float64)
    ce = (p - y).abs_().neg_().add_(1.0).log_().neg_()
    if weights is None:
        return ce.sum(), y.sum(), torch.tensor(float(p.numel()), dtype=torch.float64)
    w = weights.to(torch.float64)
    return (ce * w).sum(), (y * w).sum(), w.sum()


def _torch_error_sums(preds, target, weights, squared):
    d = preds.to(torch.float64) - target.to(torch.float64)
    e = d * d if squared else d.abs()
    if weights is None:
        return e.sum(), torch.tensor(float(e.numel()), dtype=torch.float64)
    w = weights.to(torch.float64)
    return (e * w).sum(), w.sum()


def _torch_correct_sums(preds, target, weights, threshold, inclusive):
    ok = (preds >= threshold if inclusive else preds > threshold) == target.to(torch.bool)
    if weights is None:
        return ok.sum().to(torch.int64), torch.tensor(preds.shape[0])
    w = weights.to(torch.float64)
    return (w * ok).sum(), w.sum()


def _per_call_us(fn, batches, rounds: int) -> float:
    """Median over ``rounds`` of the mean time per call over ``batches`` (µs)."""
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        for b in batches:
            fn(*b)
        times.append((time.perf_counter() - t0) / len(batches) * 1e6)
    return float(np.median(times))  # (one round: its mean)


def bench_sums(sizes=(8192, 65536), seconds: float = 0.25) -> None:
    """The fused sums against the torch expressions they replaced, on one torch thread
    (the service's), interleaved in one process, best of 7 rounds (this machine's load
    swings more than the ratios); and NE / MSE / Accuracy ``update`` per batch."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    rng = np.random.default_rng(7)
    for n in sizes:
        k = 16
        p = [torch.from_numpy(rng.random(n).astype(np.float32)) for _ in range(k)]
        y = [torch.from_numpy((rng.random(n) < 0.3).astype(np.float32)) for _ in range(k)]
        w = [torch.from_numpy(rng.random(n).astype(np.float32)) for _ in range(k)]
        cases = [
            ("NE sums", logloss_sums, _torch_logloss_sums, 1e-12),
            ("MSE sums", error_sums, _torch_error_sums, True),
            ("MAE sums", error_sums, _torch_error_sums, False),
        ]
        for weighted in (False, True):
            ws = w if weighted else [None] * k
            for name, new, old, arg in cases:
                batches = [(p[i], y[i], ws[i], arg) for i in range(k)]
                reps = max(1, int(seconds / (n * 2e-8 * k)))
                res = {"old": [], "new": []}
                for _ in range(7):  # interleaved rounds
                    res["old"].append(_per_call_us(old, batches * reps, 1))
                    res["new"].append(_per_call_us(new, batches * reps, 1))
                o, f = min(res["old"]), min(res["new"])
                label = "weighted" if weighted else "unweighted"
                print(
                    f"{name} {label}, {n:,} samples: fused {f:.1f} µs, torch expression "
                    f"{o:.1f} µs: x{o / f:.2f}"
                )
            batches = [(p[i], y[i], ws[i], 0.5, False) for i in range(k)]
            res = {"old": [], "new": []}
            for _ in range(7):
                res["old"].append(_per_call_us(_torch_correct_sums, batches * 20, 1))
                res["new"].append(_per_call_us(binary_correct_sums, batches * 20, 1))
            o, f = min(res["old"]), min(res["new"])
            label = "weighted" if weighted else "unweighted"
            print(
                f"Accuracy counts {label}, {n:,} samples: fused {f:.1f} µs, torch expression "
                f"{o:.1f} µs: x{o / f:.2f}"
            )
        for name, m in (
            ("NormalizedEntropy", NormalizedEntropy()),
            ("MeanSquaredError", MeanSquaredError()),
            ("Accuracy", Accuracy()),
        ):
            batches = [(p[i], y[i]) for i in range(k)] * 20
            us = min(_per_call_us(m.update, batches, 1) for _ in range(7))
            print(f"{name}.update (validation included), {n:,} samples: {us:.1f} µs a batch")
    torch.set_num_threads(threads)


def bench_sort_baseline(n: int) -> float:
    """Seconds to sort ``n`` random int64 in place (best of 3): the floor of a sort-based
    grouped AUC, measured in the same run."""
    a = np.random.default_rng(5).integers(0, 2**62, n)
    best = math.inf
    for _ in range(3):
        b = a.copy()
        t0 = time.perf_counter()
        b.sort()
        best = min(best, time.perf_counter() - t0)
    print(f"np.sort of {n:,} random int64 (same-run baseline): {best:.3f} s")
    return best


def brute_xauc(p, t):
    d = (t[:, None] - t[None, :]).astype(np.float64) * (p[:, None] - p[None, :])
    n = len(p)
    return float((np.triu(d, 1) > 0).sum()) / (n * (n - 1) / 2)


def bench_xauc(n: int, check_n: int) -> None:
    rng = np.random.default_rng(0)
    p = np.round(rng.random(n), 4).astype(np.float32)
    t = np.round(rng.exponential(size=n), 2).astype(np.float32)
    m = XAUC()
    m.update(torch.from_numpy(p), torch.from_numpy(t))
    v, secs = _timed(m.compute)
    small = XAUC()
    small.update(torch.from_numpy(p[:check_n]), torch.from_numpy(t[:check_n]))
    diff = abs(small.compute().item() - brute_xauc(p[:check_n], t[:check_n]))
    print(
        f"exact XAUC compute {n:,} samples: {secs:.2f} s (value {v.item():.6f}); "
        f"|exact - brute force| at {check_n:,}: {diff:.1e}"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small sizes (a few seconds)")
    ap.add_argument("--samples", type=int, default=1_000_000)
    ap.add_argument("--groups", type=int, default=100_000)
    ap.add_argument("--big-samples", type=int, default=10_000_000)
    ap.add_argument("--big-groups", type=int, default=1_000_000)
    ap.add_argument(
        "--ref-fraction",
        type=float,
        default=0.1,
        help="fraction of groups the per-group reference loop is timed on",
    )
    ap.add_argument("--batches", type=int, default=2000)
    ap.add_argument("--xauc-samples", type=int, default=1_000_000)
    parts = ("gauc", "gauc-big", "decay", "updates", "xauc", "sums")
    ap.add_argument("--only", nargs="+", choices=parts, help="run only these parts")
    args = ap.parse_args()
    if args.quick:
        args.samples, args.groups = 100_000, 10_000
        args.big_samples, args.big_groups = 1_000_000, 100_000
        args.batches, args.xauc_samples = 300, 100_000
    only = set(args.only or parts)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    if "gauc" in only:
        bench_grouped_auc(args.samples, args.groups, args.ref_fraction)
    if "gauc-big" in only:
        bench_grouped_auc_big(args.big_samples, args.big_groups)
    if "decay" in only:
        bench_decay_update(args.batches, 4096, max(5, args.batches // 50))
    if "updates" in only:
        bench_unweighted_updates(args.batches, 4096)
    if "xauc" in only:
        bench_xauc(args.xauc_samples, 2000 if args.quick else 5000)
    if "sums" in only:
        bench_sums((8192,) if args.quick else (8192, 65536))


if __name__ == "__main__":
    main()
