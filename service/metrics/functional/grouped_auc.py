"""Exact AUC of every group at once: one sort, then segment reductions.

The samples are sorted by ``(group, prediction)`` with a single stable sort on an int64
key (the group id in the high bits, an order-preserving image of the float32 prediction
in the low 32 bits). Runs of equal key are *tie segments*; per group the Mann-Whitney U
statistic is ``sum over segments of pos_s * (neg before s in the group + neg_s / 2)``,
which counts tied (positive, negative) pairs one half, as sklearn's ``roc_auc_score``.
Everything is vectorised (cumsum, gathers, ``index_add_``): no Python loop over groups.
Without weights the counts are int64, so U is exact; the ratio is taken in float64.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

from rankboard.service.metrics.functional._keys import dense_ids, float_sort_key
from rankboard.service.metrics.functional._numpy_kernels import grouped_auc_np
from rankboard.service.metrics.functional._validation import to_numpy, validate_grouped

# CPU tensors go through the numpy kernels (faster there); tests flip this to check that
# the torch path used on other devices agrees.
_use_numpy = True

__all__ = ["GroupAUCStats", "grouped_auc", "grouped_auc_stats"]


class GroupAUCStats(NamedTuple):
    """Per-group Mann-Whitney statistics (float64, one entry per distinct group)."""

    u: Tensor  # (weighted) pairs ranked correctly, ties one half
    pos: Tensor  # (weighted) number of positives
    neg: Tensor  # (weighted) number of negatives


def grouped_auc_stats(
    preds: Tensor,
    target: Tensor,
    groups: Tensor | None = None,
    weights: Tensor | None = None,
) -> GroupAUCStats:
    """Mann-Whitney U, positives and negatives of every group (unchecked inputs).

    ``preds`` finite floats, ``target`` in {0, 1}, ``groups`` integer ids (None: one
    group), ``weights`` non-negative (None: all 1). Groups come out in ascending id order.

    >>> s = grouped_auc_stats(torch.tensor([0.1, 0.4, 0.4, 0.8]), torch.tensor([0, 0, 1, 1]))
    >>> s.u.tolist(), s.pos.tolist(), s.neg.tolist()
    ([3.5], [2.0], [2.0])
    """
    n = int(preds.numel())
    dev = preds.device
    if n == 0:
        z = torch.zeros(0, dtype=torch.float64, device=dev)
        return GroupAUCStats(z, z, z)
    if dev.type == "cpu" and _use_numpy:
        try:
            u2_np, pos_np, neg_np = grouped_auc_np(
                to_numpy(preds),
                to_numpy(target),
                None if groups is None else to_numpy(groups),
                None if weights is None else to_numpy(weights),
            )
        except OverflowError:
            pass
        else:
            f = torch.from_numpy
            return GroupAUCStats(f(u2_np).double() / 2, f(pos_np).double(), f(neg_np).double())
    key = float_sort_key(preds)
    if groups is not None:
        gid, _ = dense_ids(groups.to(torch.int64))
        key = (gid << 32) | key
    sorted_key, perm = torch.sort(key, stable=True)
    t = target[perm]
    if weights is None:
        pw = t.to(torch.int64)
        nw = 1 - pw
    else:
        w = weights[perm].to(torch.float64)
        pw = t.to(torch.float64) * w
        nw = w - pw
    seg_start = torch.ones(n, dtype=torch.bool, device=dev)
    seg_start[1:] = sorted_key[1:] != sorted_key[:-1]
    starts = torch.nonzero(seg_start).squeeze(1)
    zero = torch.zeros(1, dtype=pw.dtype, device=dev)
    cpos = torch.cat([zero, torch.cumsum(pw, 0)])
    cneg = torch.cat([zero, torch.cumsum(nw, 0)])
    ends = torch.cat([starts[1:], torch.tensor([n], device=dev)])
    pos_s = cpos[ends] - cpos[starts]
    neg_s = cneg[ends] - cneg[starts]
    cneg_before = cneg[starts]  # negatives before the segment, over all groups
    if groups is None:
        u2 = (pos_s * (2 * cneg_before + neg_s)).sum().reshape(1)
        pos_g = pos_s.sum().reshape(1)
        neg_g = neg_s.sum().reshape(1)
    else:
        seg_group = sorted_key[starts] >> 32
        g_start = torch.ones_like(seg_start[: starts.numel()])
        g_start[1:] = seg_group[1:] != seg_group[:-1]
        gi = torch.cumsum(g_start, 0) - 1
        first = torch.nonzero(g_start).squeeze(1)
        rel = cneg_before - cneg_before[first][gi]
        num_groups = int(first.numel())
        u2 = torch.zeros(num_groups, dtype=pw.dtype, device=dev).index_add_(
            0, gi, pos_s * (2 * rel + neg_s)
        )
        pos_g = torch.zeros(num_groups, dtype=pw.dtype, device=dev).index_add_(0, gi, pos_s)
        neg_g = torch.zeros(num_groups, dtype=pw.dtype, device=dev).index_add_(0, gi, neg_s)
    return GroupAUCStats(u2.to(torch.float64) / 2, pos_g.to(torch.float64), neg_g.to(torch.float64))


def grouped_auc(
    preds: Tensor,
    target: Tensor,
    grouping_key: Tensor,
    weights: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Mean exact AUC over the groups that have both classes, and how many those are.

    Ties in predictions count one half. Groups with only positives or only negatives
    are skipped; with no valid group the value is NaN (count 0). ``weights``: each
    group's AUC is its weighted Mann-Whitney statistic (torchrec's weighted GAUC); groups
    count equally.

    >>> p = torch.tensor([0.9, 0.1, 0.5, 0.5, 0.3, 0.2])
    >>> y = torch.tensor([1, 0, 1, 0, 1, 1])
    >>> g = torch.tensor([7, 7, 8, 8, 9, 9])  # group 9 has no negative
    >>> value, count = grouped_auc(p, y, g)
    >>> round(value.item(), 4), count.item()
    (0.75, 2)
    """
    b = validate_grouped(
        preds, target, grouping_key, weights, label_kind="binary", metric_name="grouped_auc"
    )
    return grouped_auc_from_stats(grouped_auc_stats(b.preds, b.target, b.keys, b.weights))


def grouped_auc_from_stats(
    stats: GroupAUCStats, keep: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Average the per-group AUCs of ``stats`` over valid groups: ``(value, count)``.

    A group is valid with positive and negative (weight); ``keep`` (bool per group)
    restricts the groups further.
    """
    valid = (stats.pos > 0) & (stats.neg > 0)
    if keep is not None:
        valid = valid & keep
    count = valid.sum()
    denom = torch.where(valid, stats.pos * stats.neg, torch.ones_like(stats.pos))
    total = torch.where(valid, stats.u / denom, torch.zeros_like(stats.u)).sum()
    value = torch.where(count > 0, total / count.clamp(min=1), torch.full_like(total, math.nan))
    return value.to(torch.float64), count.to(torch.int64)
