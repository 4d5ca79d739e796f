"""Columns from a metric's own retained state, for ``RankMetric.compute_interval``.

Metrics that keep their samples (exact AUC, exact XAUC, grouped AUC / XAUC, exact
multiclass AUC) give them back as :class:`Columns`. A binned AUC keeps only its
histogram, which is enough for its (unclustered) DeLong interval: every bucket becomes as
many pseudo-samples as it counts, at a score that falls back into that bucket (the
histogram is read as unweighted counts; a non-integer, weighted histogram is refused).
Metrics that keep only sums (NE, MSE, MAE, accuracy, recall@k, in-batch XAUC) cannot:
they raise ``ValueError`` pointing to :func:`~rankboard.service.metrics.stats.arm_stats`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from rankboard.service.metrics.stats.columns import Columns

__all__ = ["columns_from_metric"]


def _cat(state: Any) -> np.ndarray | None:
    if isinstance(state, torch.Tensor):
        return state.detach().cpu().numpy()
    if not state:
        return None
    return torch.cat([s.detach().cpu() for s in state]).numpy()


def _from_histogram(metric: Any) -> Columns:
    hist = metric.hist.detach().cpu().numpy().astype(np.float64)
    if not np.all(hist == np.round(hist)):
        raise ValueError(
            f"{type(metric).__name__}: a weighted binned histogram has no per-sample "
            "weights; use rankboard.service.metrics.stats.arm_stats with the samples"
        )
    t = hist.size // 2
    counts = hist.astype(np.int64)
    if getattr(metric, "bins", 0) or not hasattr(metric, "bins"):
        rep = ((np.arange(t) + 0.5) / t).astype(np.float32)  # the middle of each bin
    else:
        from rankboard.service.metrics.functional.histogram import threshold_points

        rep = threshold_points(t).numpy()  # bucket k holds [point k, point k+1)
    preds = np.concatenate([np.repeat(rep, counts[:t]), np.repeat(rep, counts[t:])])
    target = np.concatenate(
        [np.zeros(int(counts[:t].sum()), np.float32), np.ones(int(counts[t:].sum()), np.float32)]
    )
    return Columns(preds, target)


def columns_from_metric(metric: Any) -> Columns:
    """The samples a metric retains, as :class:`Columns` (see the module docstring).

    >>> from rankboard.service.metrics import GroupedAUC
    >>> m = GroupedAUC(grouping_key="user_id")
    >>> m.update(torch.tensor([0.9, 0.1]), torch.tensor([1, 0]), grouping_key=torch.tensor([7, 7]))
    >>> cols = columns_from_metric(m)
    >>> cols.n, sorted(cols.keys)
    (2, ['user_id'])
    """
    kind = type(metric).__name__
    if kind in ("AUC", "DecayAUC") and hasattr(metric, "hist"):
        return _from_histogram(metric)
    preds_state = getattr(metric, "preds", None)
    if preds_state is None or (kind == "XAUC" and getattr(metric, "in_batch", False)):
        raise ValueError(
            f"{kind} keeps only running sums, not its samples, so it has no interval "
            "from its state; use rankboard.service.metrics.stats.arm_stats with the "
            "samples (Columns), or the service's /metrics and /compare endpoints"
        )
    preds = _cat(preds_state)
    if preds is None:
        raise ValueError(f"{kind}: no samples yet")
    target = _cat(metric.target)
    assert target is not None  # a target per retained prediction
    weights = None
    if kind == "AUC":
        w = metric._weights(torch.from_numpy(preds))
        weights = None if w is None else w.detach().cpu().numpy()
    keys: dict[str, np.ndarray] = {}
    if getattr(metric, "needs_grouping_key", False):
        key_col = _cat(metric.keys)
        assert key_col is not None  # a grouped metric keeps a key per retained sample
        keys[metric.grouping_key_name] = key_col
    return Columns(preds, target, weights, keys)
