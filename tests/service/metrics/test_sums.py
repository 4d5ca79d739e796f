"""The fused float64 sums (functional/_sums.py) against definitions written here:
scratch reuse across batch sizes, thresholds hit exactly, weights, threads, batches
larger than the kept scratch."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
from sklearn.metrics import accuracy_score, log_loss, mean_absolute_error, mean_squared_error

from rankboard.service.metrics import (
    Accuracy,
    MeanAbsoluteError,
    MeanSquaredError,
    NormalizedEntropy,
)
from rankboard.service.metrics.functional import _sums
from rankboard.service.metrics.functional._sums import (
    binary_correct_sums,
    error_sums,
    logloss_sums,
)


def _batch(rng: np.random.Generator, n: int, weighted: bool):
    p = rng.random(n).astype(np.float32)
    p[: n // 10] = rng.choice([0.0, 1.0, 0.5], n // 10)  # clamped ends, the threshold
    y = (rng.random(n) < 0.3).astype(np.float32)
    w = rng.random(n).astype(np.float32) if weighted else None
    return p, y, w


def _t(x):
    return None if x is None else torch.from_numpy(x)


@pytest.mark.parametrize("weighted", [False, True])
def test_logloss_sums_match_the_definition(weighted: bool) -> None:
    rng = np.random.default_rng(1)
    eta = 1e-7
    for n in (5000, 17, 3000, 1):  # the scratch is reused: larger, then smaller batches
        p, y, w = _batch(rng, n, weighted)
        ce, pos, total = logloss_sums(_t(p), _t(y), _t(w), eta)
        ww = np.ones(n) if w is None else w.astype(np.float64)
        pc = np.clip(p.astype(np.float64), eta, 1 - eta)
        # torchrec's formula: clamp, then log(p) or log(1 - p)
        ref = -(y * np.log(pc) + (1 - y) * np.log(1 - pc))
        assert ce == pytest.approx(float(np.sum(ww * ref)), rel=1e-12, abs=1e-9)
        assert pos == pytest.approx(float(np.sum(ww * y)), rel=1e-12)
        assert total == pytest.approx(float(np.sum(ww)), rel=1e-12)


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("squared", [False, True])
def test_error_sums_match_sklearn(weighted: bool, squared: bool) -> None:
    rng = np.random.default_rng(2)
    for n in (4000, 33, 1):
        p = rng.normal(size=n).astype(np.float32)
        y = rng.normal(size=n).astype(np.float32)
        w = rng.random(n).astype(np.float32) if weighted else None
        e, total = error_sums(_t(p), _t(y), _t(w), squared)
        ww = np.ones(n) if w is None else w.astype(np.float64)
        fn = mean_squared_error if squared else mean_absolute_error
        ref = fn(y.astype(np.float64), p.astype(np.float64), sample_weight=ww)
        assert e / total == pytest.approx(ref, rel=1e-12)
        assert total == pytest.approx(float(ww.sum()), rel=1e-12)


@pytest.mark.parametrize("inclusive", [False, True])
@pytest.mark.parametrize("weighted", [False, True])
def test_binary_correct_sums_match_sklearn(inclusive: bool, weighted: bool) -> None:
    rng = np.random.default_rng(3)
    for n in (2000, 9, 1):
        p, y, w = _batch(rng, n, weighted)
        c, total = binary_correct_sums(_t(p), _t(y), _t(w), 0.5, inclusive)
        pred = (p >= np.float32(0.5)) if inclusive else (p > np.float32(0.5))
        ww = None if w is None else w.astype(np.float64)
        ref = accuracy_score(y.astype(bool), pred, sample_weight=ww)
        assert c / total == pytest.approx(ref, rel=1e-12)
        if w is None:
            assert isinstance(c, int) and total == n


def test_metrics_over_batches_equal_one_pass_definitions() -> None:
    """Classes accumulate the sums: batches of changing sizes equal one pass."""
    rng = np.random.default_rng(4)
    parts = [_batch(rng, n, True) for n in (700, 5, 4096, 1)]
    p, y, w = (np.concatenate([b[i] for b in parts]) for i in range(3))
    ne, mae, mse, acc = NormalizedEntropy(), MeanAbsoluteError(), MeanSquaredError(), Accuracy()
    for bp, by, bw in parts:
        for m in (ne, mae, mse, acc):
            m.update(_t(bp), _t(by), weights=_t(bw))
    w64 = w.astype(np.float64)
    pc = np.clip(p.astype(np.float64), 1e-12, 1 - 1e-12)
    rate = np.sum(w64 * y) / np.sum(w64)
    base = -(rate * np.log(rate) + (1 - rate) * np.log(1 - rate))
    logloss = -np.sum(w64 * (y * np.log(pc) + (1 - y) * np.log(1 - pc))) / np.sum(w64)
    assert ne.compute().item() == pytest.approx(logloss / base, rel=1e-12)
    assert logloss == pytest.approx(log_loss(y, pc, sample_weight=w64), rel=1e-6)
    assert mae.compute().item() == pytest.approx(
        mean_absolute_error(y, p.astype(np.float64), sample_weight=w64), rel=1e-12
    )
    assert mse.compute().item() == pytest.approx(
        mean_squared_error(y, p.astype(np.float64), sample_weight=w64), rel=1e-12
    )
    assert acc.compute().item() == pytest.approx(
        accuracy_score(y.astype(bool), p > np.float32(0.5), sample_weight=w64), rel=1e-12
    )


def test_threads_have_their_own_scratch() -> None:
    rng = np.random.default_rng(5)
    batches = [_batch(rng, n, True) for n in (3000, 1500, 2500, 800)]
    expected = [logloss_sums(_t(p), _t(y), _t(w), 1e-12) for p, y, w in batches]
    results: dict[int, list] = {}
    barrier = threading.Barrier(len(batches))

    def work(i: int) -> None:
        p, y, w = batches[i]
        barrier.wait()
        results[i] = [logloss_sums(_t(p), _t(y), _t(w), 1e-12) for _ in range(50)]

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(batches))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, exp in enumerate(expected):
        assert all(r == exp for r in results[i])


def test_a_batch_larger_than_the_kept_scratch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_sums, "_KEEP_MAX", 1000)
    error_sums(torch.zeros(1), torch.zeros(1), torch.ones(1), True)  # this thread's scratch
    kept = [b.size for b in _sums._local.bufs]
    rng = np.random.default_rng(6)
    p, y, w = _batch(rng, 5000, True)
    e, total = error_sums(_t(p), _t(y), _t(w), True)
    ref = mean_squared_error(y, p.astype(np.float64), sample_weight=w.astype(np.float64))
    assert e / total == pytest.approx(ref, rel=1e-12)
    assert [b.size for b in _sums._local.bufs] == kept  # not grown to 5000


@pytest.mark.parametrize("weighted", [False, True])
def test_torch_path_of_other_devices_agrees(
    weighted: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The torch expressions that run on other devices (here forced on the CPU) give the
    numpy kernels' sums."""
    rng = np.random.default_rng(7)
    p, y, w = _batch(rng, 3000, weighted)
    calls = [
        lambda: logloss_sums(_t(p), _t(y), _t(w), 1e-7),
        lambda: error_sums(_t(p), _t(y), _t(w), True),
        lambda: error_sums(_t(p), _t(y), _t(w), False),
        lambda: binary_correct_sums(_t(p), _t(y), _t(w), 0.5, False),
        lambda: binary_correct_sums(_t(p), _t(y), _t(w), 0.5, True),
    ]
    fast = [[float(x) for x in c()] for c in calls]
    monkeypatch.setattr(_sums, "_use_numpy", False)
    slow = [[float(x) for x in c()] for c in calls]
    for a, b in zip(fast, slow, strict=True):
        assert a == pytest.approx(b, rel=1e-12)
