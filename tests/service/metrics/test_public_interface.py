"""What the service needs of a metric, on public ground: state_copy, memory_bytes,
state_snapshot, load_state_dict (older states included), no torchmetrics internals."""

from __future__ import annotations

import math
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from rankboard.service.metrics import (
    AUC,
    XAUC,
    DecayAUC,
    GroupedAUC,
    MulticlassAUC,
    NormalizedEntropy,
    TrainMetricWrapper,
)
from rankboard.service.metrics.extra import Windowed

ROOT = Path(__file__).resolve().parents[3]

# torchmetrics internals (and the nn.Module ones torchmetrics hooks into) that rankboard's
# metric and state code must not read, write or override
PRIVATE = re.compile(
    r"\._defaults\b|\._computed\b|\._update_count\b|\._persistent\b|\._reductions\b"
    r"|\b_wrap_update\b|\b_wrap_compute\b|\b_load_from_state_dict\b|\b_reduce_states\b"
    r"|__dict__\.get\(\"_modules\""
)


def test_no_torchmetrics_internals_in_metrics_or_state() -> None:
    files = sorted((ROOT / "service" / "metrics").rglob("*.py"))
    files += sorted((ROOT / "service" / "state").glob("*.py"))
    assert files
    hits = [
        f"{f.relative_to(ROOT)}:{i}: {line.strip()}"
        for f in files
        for i, line in enumerate(f.read_text().splitlines(), 1)
        if PRIVATE.search(line)
    ]
    assert hits == []


def _data(rng: np.random.Generator, n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    p = torch.from_numpy(rng.random(n).astype(np.float32))
    y = torch.from_numpy((rng.random(n) < 0.4).astype(np.float32))
    k = torch.from_numpy(rng.integers(0, 7, n))
    return p, y, k


def _sklearn_auc(p: np.ndarray, y: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(y, p))


def test_state_copy_is_independent_and_shares_chunks() -> None:
    rng = np.random.default_rng(3)
    p1, y1, _ = _data(rng, 300)
    p2, y2, _ = _data(rng, 200)
    m = AUC(thresholds=0)
    m.update(p1, y1)
    c = m.state_copy()
    assert all(a is b for a, b in zip(c.preds, m.preds, strict=True))  # no sample copied
    m.update(p2, y2)  # the copy does not see it
    assert c.compute().item() == pytest.approx(_sklearn_auc(p1.numpy(), y1.numpy()), abs=1e-12)
    both_p = np.concatenate([p1.numpy(), p2.numpy()])
    both_y = np.concatenate([y1.numpy(), y2.numpy()])
    assert m.compute().item() == pytest.approx(_sklearn_auc(both_p, both_y), abs=1e-12)
    c.update(p2[:10], y2[:10])  # nor does the original see the copy's updates
    assert len(m.preds) == 2 and len(c.preds) == 2


def test_state_copy_of_tensor_states_and_wrapped_metrics() -> None:
    rng = np.random.default_rng(4)
    ne = NormalizedEntropy()
    p, y, _ = _data(rng, 100)
    ne.update(p, y)
    c = ne.state_copy()
    before = c.compute().item()
    ne.update(*_data(rng, 100)[:2])
    assert c.compute().item() == before != ne.compute().item()

    w = TrainMetricWrapper(DecayAUC(bins=10), decay_rate=0.5, decay_step=1)
    w.update(p, y)
    wc = w.state_copy()
    assert wc.metric is not w.metric and wc.num_updates == 1
    w.update(*_data(rng, 100)[:2])
    assert wc.num_updates == 1 and w.num_updates == 2
    ref = AUC(bins=10)  # one decay step from an empty state: the first batch's histogram
    ref.update(p, y)
    assert wc.compute().item() == pytest.approx(ref.compute().item(), abs=1e-12)


def test_state_copy_of_a_sampling_metric_keeps_drawing() -> None:
    rng = np.random.default_rng(5)
    m = XAUC(max_pairs=50, seed=11)
    m.update(torch.from_numpy(rng.random(400)), torch.from_numpy(rng.random(400)))
    a = m.state_copy().compute().item()
    b = m.state_copy().compute().item()
    assert a != b  # one generator, shared by the copies: new pairs every compute


def test_memory_bytes_counts_retained_samples() -> None:
    rng = np.random.default_rng(6)
    p, y, k = _data(rng, 1000)
    g = GroupedAUC()
    g.update(p, y, grouping_key=k)
    g.update(p[:10], y[:10], grouping_key=k[:10], weights=torch.ones(10))
    # float32 pred + float32 label + int64 key per sample, float32 weight where given
    assert g.memory_bytes() == 1010 * (4 + 4 + 8) + 10 * 4
    assert NormalizedEntropy().memory_bytes() == 0
    w = TrainMetricWrapper(AUC(thresholds=0), decay_step=100)
    w.update(p, y)
    assert w.memory_bytes() == 1000 * 8  # the wrapped metric's samples


def test_snapshot_loads_back_and_counts_as_updated() -> None:
    rng = np.random.default_rng(7)
    p, y, k = _data(rng, 500)
    g = GroupedAUC()
    g.update(p, y, grouping_key=k)
    fresh = GroupedAUC()
    fresh.load_state_dict(g.state_snapshot())
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "compute before update" warning
        assert fresh.update_called
        assert fresh.compute().item() == g.compute().item()
    fresh.reset()
    assert not fresh.update_called


def test_compute_is_not_cached_across_loads() -> None:
    rng = np.random.default_rng(8)
    a, b = AUC(thresholds=0), AUC(thresholds=0)
    a.update(*_data(rng, 100)[:2])
    b.update(*_data(rng, 100)[:2])
    first = a.compute().item()
    a.load_state_dict(b.state_dict())
    assert a.compute().item() == b.compute().item() != first
    with pytest.raises(ValueError, match="compute_with_cache"):
        AUC(compute_with_cache=True)


def test_older_states_load() -> None:
    """States written by earlier versions: GroupedAUC/XAUC without weights, a binned AUC
    without threshold points (keeps its equal-width bins)."""
    rng = np.random.default_rng(9)
    p, y, k = _data(rng, 300)
    g = GroupedAUC()
    g.update(p, y, grouping_key=k)
    old = {key: v for key, v in g.state_dict().items() if key != "weights"}
    fresh = GroupedAUC()
    fresh.load_state_dict(old)
    assert fresh.compute().item() == g.compute().item()
    assert [int(w.numel()) for w in fresh.weights] == [0]  # unit weights

    binned = AUC(bins=20)
    binned.update(p, y)
    old = {key: v for key, v in binned.state_dict().items() if key != "points"}
    legacy = AUC(thresholds=20)  # a config of that time: thresholds meant bins
    legacy.load_state_dict(old)
    assert (legacy.thresholds, legacy.bins) == (0, 20)
    assert legacy.compute().item() == binned.compute().item()


def test_multiclass_merge_sizes_an_empty_histogram() -> None:
    rng = np.random.default_rng(10)
    p = torch.from_numpy(rng.dirichlet(np.ones(3), 200).astype(np.float32))
    t = torch.from_numpy(rng.integers(0, 3, 200))
    a, b, both = MulticlassAUC(bins=10), MulticlassAUC(bins=10), MulticlassAUC(bins=10)
    b.update(p, t)
    both.update(p, t)
    a.merge_state(b)  # a has seen nothing: its histogram takes b's size
    assert a.compute().item() == both.compute().item()
    b.merge_state(MulticlassAUC(bins=10))
    assert b.compute().item() == both.compute().item()


def test_windowed_state_copy() -> None:
    m = Windowed(lambda: AUC(thresholds=0), window_size=4)
    m.update(torch.tensor([0.9, 0.1]), torch.tensor([0, 1]))
    c = m.state_copy()
    m.update(torch.tensor([0.2, 0.8, 0.3, 0.7]), torch.tensor([0, 1, 0, 1]))
    assert c.compute().item() == 0.0 and m.compute().item() == 1.0
    assert math.isnan(Windowed(lambda: AUC(thresholds=0), window_size=2).compute().item())


def _state_equal(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    if sa.keys() != sb.keys():
        return False
    for k in sa:
        x, y = sa[k], sb[k]
        if isinstance(x, list):
            x = torch.cat(x) if x else torch.zeros(0)
            y = torch.cat(y) if y else torch.zeros(0)
        if x.shape != y.shape or not torch.equal(x.isnan(), y.isnan()):
            return False
        if not torch.equal(x.nan_to_num(0.0), y.nan_to_num(0.0)):
            return False
    return True


@pytest.mark.parametrize(
    "make",
    [
        lambda: AUC(thresholds=0),
        lambda: GroupedAUC(),
        lambda: NormalizedEntropy(),
        lambda: Windowed(lambda: AUC(thresholds=0), window_size=150),
        lambda: TrainMetricWrapper(AUC(thresholds=0), decay_rate=0.5, decay_step=2),
        lambda: TrainMetricWrapper(DecayAUC(bins=10), decay_rate=0.5, decay_step=2),
    ],
)
def test_undo_puts_every_state_back(make) -> None:
    """After any number of updates (window trims, decay steps that reset the wrapped
    metric included), undo gives exactly the state of a metric that never saw them."""
    rng = np.random.default_rng(12)
    batches = [_data(rng, 100) for _ in range(5)]
    m, ref = make(), make()

    def feed(metric, b):
        p, y, k = b
        kw = {"grouping_key": k} if metric.needs_grouping_key else {}
        metric.update(p, y, **kw)

    feed(m, batches[0])
    feed(ref, batches[0])
    mark = m.undo_mark()
    for b in batches[1:4]:
        feed(m, b)
    m.undo(mark)
    assert _state_equal(m, ref)
    feed(m, batches[4])
    feed(ref, batches[4])
    assert _state_equal(m, ref)
    assert m.compute().item() == pytest.approx(ref.compute().item(), nan_ok=True)
    if isinstance(m, TrainMetricWrapper):
        assert m.num_updates == ref.num_updates == 2


@pytest.mark.parametrize(
    "make",
    [
        lambda: AUC(thresholds=0),
        lambda: AUC(thresholds=50),
        lambda: GroupedAUC(),
        lambda: NormalizedEntropy(),
        lambda: MulticlassAUC(bins=10),
        lambda: Windowed(lambda: GroupedAUC(), window_size=150),
        lambda: TrainMetricWrapper(AUC(thresholds=0), decay_rate=0.5, decay_step=2),
        lambda: TrainMetricWrapper(DecayAUC(bins=10), decay_rate=0.5, decay_step=2),
    ],
)
def test_check_once_then_update_batch_equals_update(make) -> None:
    """Validate once (check_inputs returns the batch), apply later (update_batch): the
    same states, values and refresh flags as update with the raw inputs."""
    rng = np.random.default_rng(13)
    a, b = make(), make()
    for i in range(5):
        p, y, k = _data(rng, 0 if i == 2 else 100)  # an empty batch too
        if isinstance(a, MulticlassAUC):
            p = torch.from_numpy(rng.dirichlet(np.ones(3), p.shape[0]).astype(np.float32))
            y = torch.from_numpy(rng.integers(0, 3, p.shape[0]))
        kw = {"grouping_key": k} if a.needs_grouping_key else {}
        a.update(p, y, **kw)
        b.update_batch(b.check_inputs(p, y, **kw))
        assert _state_equal(a, b)
        if isinstance(a, TrainMetricWrapper):
            assert a.refreshed == b.refreshed
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # updated: no "compute before update" warning
        assert b.compute().item() == pytest.approx(a.compute().item(), nan_ok=True)
    with pytest.raises(ValueError):
        b.check_inputs(torch.tensor([0.5, float("nan")]), torch.tensor([0, 1]))
