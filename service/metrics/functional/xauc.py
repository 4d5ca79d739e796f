"""XAUC: the fraction of sample pairs whose targets and predictions are ordered alike.

Exact mode counts, over all ``n (n - 1) / 2`` pairs, those with
``(t_i - t_j) (p_i - p_j) > 0``; ties in either count as disagreement. It runs in
``O(n log n)`` time and ``O(n)`` memory:

1. sort by ``(t ascending, p descending)``, so that a concordant pair is exactly a pair
   ``i < j`` (in that order) with ``p_i < p_j`` strictly: within equal ``t`` the
   predictions descend and never count;
2. replace ``p`` by its dense rank ``r`` (``B = bit_length(max r)`` bits);
3. count pairs ``i < j`` with ``r_i < r_j`` bit by bit, from the most significant bit: a
   pair first differs at bit ``b`` with a 0 in ``r_i`` and a 1 in ``r_j``. With the
   sequence stably partitioned by the bits above ``b`` (a radix refinement kept in
   order), each element with bit 1 adds the number of elements with bit 0 before it in
   its segment. Every level is a handful of vectorised passes (cumsum, gather, scatter).

Grouped XAUC runs the same algorithm with the group id prepended to the segments, so all
groups are counted in one pass. The sampling estimate of the reference (random pairs,
fraction concordant) is here too, seeded for reproducible values.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

from rankboard.service.metrics.functional._keys import dense_ids, float_sort_key
from rankboard.service.metrics.functional._numpy_pairs import grouped_xauc_np, weighted_xauc_np
from rankboard.service.metrics.functional._validation import (
    to_numpy,
    validate_batch,
    validate_grouped,
)

# CPU tensors use the numpy kernels; tests flip this to check the torch path agrees.
_use_numpy = True

__all__ = [
    "GroupXAUCStats",
    "count_increasing_pairs",
    "grouped_xauc",
    "grouped_xauc_stats",
    "sampled_grouped_xauc",
    "sampled_xauc",
    "weighted_xauc_stats",
    "xauc",
]


def count_increasing_pairs(r: Tensor, seg: Tensor | None = None, num_segs: int = 1) -> Tensor:
    """Per segment, the number of pairs ``i < j`` with ``r[i] < r[j]`` (int64, ``(num_segs,)``).

    ``r``: non-negative int64 values; ``seg``: non-decreasing segment ids in
    ``[0, num_segs)`` (None: one segment). Pairs only count within a segment.

    >>> count_increasing_pairs(torch.tensor([2, 0, 1, 3])).tolist()
    [4]
    >>> count_increasing_pairs(torch.tensor([0, 1, 0, 1]), torch.tensor([0, 0, 1, 1]), 2).tolist()
    [1, 1]
    """
    n = int(r.numel())
    dev = r.device
    out = torch.zeros(num_segs, dtype=torch.int64, device=dev)
    if n < 2:
        return out
    g = torch.zeros(n, dtype=torch.int64, device=dev) if seg is None else seg.to(torch.int64)
    bits = int(r.max()).bit_length()
    idx = torch.arange(n, device=dev)
    cur = r.to(torch.int64)
    start = torch.ones(n, dtype=torch.bool, device=dev)
    for b in range(bits - 1, -1, -1):
        prefix = (g << (bits - b)) | (cur >> (b + 1))
        start[1:] = prefix[1:] != prefix[:-1]
        bit = (cur >> b) & 1
        zero = 1 - bit
        cz_incl = torch.cumsum(zero, 0)
        cz = cz_incl - zero  # zeros strictly before, globally
        seg_start = torch.cummax(torch.where(start, idx, 0), 0).values
        zeros_before = cz - cz[seg_start]
        out.index_add_(0, g, zeros_before * bit)
        if b == 0:
            break
        # stable partition of every segment: zeros first, then ones
        starts = torch.nonzero(start).squeeze(1)
        ends = torch.cat([starts[1:], torch.tensor([n], device=dev)]) - 1
        seg_zero = cz_incl[ends] - cz[starts]
        seg_of = torch.cumsum(start, 0) - 1
        zeros_in_seg = seg_zero[seg_of]
        ones_before = (idx - seg_start) - zeros_before
        new_pos = torch.where(
            bit == 0, seg_start + zeros_before, seg_start + zeros_in_seg + ones_before
        )
        nxt = torch.empty_like(cur)
        nxt[new_pos] = cur
        cur = nxt
    return out


class GroupXAUCStats(NamedTuple):
    """Per-group concordant pair counts and sizes (int64), groups in ascending id order."""

    concordant: Tensor
    sizes: Tensor


def grouped_xauc_stats(
    preds: Tensor, target: Tensor, groups: Tensor | None = None
) -> GroupXAUCStats:
    """Concordant pairs and size of every group (unchecked inputs; None: one group).

    >>> s = grouped_xauc_stats(torch.tensor([0.1, 0.2, 0.3]), torch.tensor([1.0, 3.0, 2.0]))
    >>> s.concordant.tolist(), s.sizes.tolist()
    ([2], [3])
    """
    n = int(preds.numel())
    dev = preds.device
    if n == 0:
        z = torch.zeros(0 if groups is not None else 1, dtype=torch.int64, device=dev)
        return GroupXAUCStats(z, z.clone())
    if dev.type == "cpu" and _use_numpy:
        try:
            c, s = grouped_xauc_np(
                to_numpy(preds), to_numpy(target), None if groups is None else to_numpy(groups)
            )
        except OverflowError:
            pass
        else:
            return GroupXAUCStats(torch.from_numpy(c), torch.from_numpy(s))
    # dense rank of the predictions, via a descending stable sort
    pk = float_sort_key(preds)
    pk_sorted, order1 = torch.sort(pk, descending=True, stable=True)
    change = torch.zeros(n, dtype=torch.int64, device=dev)
    change[1:] = (pk_sorted[1:] != pk_sorted[:-1]).to(torch.int64)
    desc_rank = torch.cumsum(change, 0)
    rank = desc_rank[-1] - desc_rank  # ascending dense rank, in order1
    key = float_sort_key(target[order1])
    if groups is not None:
        gid, _ = dense_ids(groups.to(torch.int64))
        key = (gid[order1] << 32) | key
    key_sorted, order2 = torch.sort(key, stable=True)
    r = rank[order2]
    if groups is None:
        conc = count_increasing_pairs(r)
        return GroupXAUCStats(conc, torch.tensor([n], device=dev))
    gs = key_sorted >> 32
    gstart = torch.ones(n, dtype=torch.int64, device=dev)
    gstart[1:] = (gs[1:] != gs[:-1]).to(torch.int64)
    seg = torch.cumsum(gstart, 0) - 1
    num_groups = int(seg[-1]) + 1
    sizes = torch.bincount(seg, minlength=num_groups)
    return GroupXAUCStats(count_increasing_pairs(r, seg, num_groups), sizes)


def _pairs(sizes: Tensor) -> Tensor:
    return sizes * (sizes - 1) // 2


class WeightedXAUCStats(NamedTuple):
    """Per group (ascending ids), float64: the weight ``w_i w_j`` of the concordant pairs,
    of all pairs, and the group's total weight."""

    concordant: Tensor
    pairs: Tensor
    weight: Tensor


def weighted_xauc_stats(
    preds: Tensor, target: Tensor, groups: Tensor | None, weights: Tensor
) -> WeightedXAUCStats:
    """Weighted concordant pairs of every group (None: one group); a pair weighs
    ``w_i * w_j`` (torchrec's weighted XAUC), concordant as in :func:`xauc`. Computed by
    the numpy kernel (``O(n log n)``; tensors on other devices go through the CPU).

    >>> s = weighted_xauc_stats(torch.tensor([0.1, 0.2, 0.3]), torch.tensor([1.0, 3.0, 2.0]),
    ...                         None, torch.tensor([1.0, 2.0, 1.0]))
    >>> s.concordant.tolist(), s.pairs.tolist(), s.weight.tolist()
    ([3.0], [5.0], [4.0])
    """
    dev = preds.device
    c, p, w = weighted_xauc_np(
        preds.detach().cpu().numpy(),
        target.detach().cpu().numpy(),
        None if groups is None else groups.detach().cpu().numpy(),
        weights.detach().cpu().numpy(),
    )
    f = torch.from_numpy
    return WeightedXAUCStats(f(c).to(dev), f(p).to(dev), f(w).to(dev))


def weighted_grouped_xauc_from_stats(stats: WeightedXAUCStats) -> tuple[Tensor, Tensor]:
    """Mean of the groups' weighted XAUC, each weighted by its total weight (the weighted
    analogue of group sizes): ``(value, groups counted)``; a group counts when its pairs
    have positive weight."""
    valid = stats.pairs > 0
    per = stats.concordant / torch.where(valid, stats.pairs, 1.0)
    gw = torch.where(valid, stats.weight, 0.0)
    total = gw.sum()
    val = (per * gw).sum() / torch.where(total > 0, total, 1.0)
    return torch.where(total > 0, val, math.nan), valid.sum()


def xauc(preds: Tensor, target: Tensor, weights: Tensor | None = None) -> Tensor:
    """Exact XAUC, a 0-d float64 tensor; NaN with fewer than two samples.

    ``weights``: a pair weighs ``w_i * w_j`` (torchrec's weighted XAUC); NaN when no pair
    has positive weight.

    >>> xauc(torch.tensor([0.1, 0.2, 0.3, 0.3]), torch.tensor([1.0, 3.0, 2.0, 5.0])).item()
    0.6666666666666666
    """
    b = validate_batch(preds, target, label_kind="real", weights=weights, metric_name="xauc")
    if b.weights is not None:
        ws = weighted_xauc_stats(b.preds, b.target, None, b.weights)
        return weighted_grouped_xauc_from_stats(ws)[0]
    s = grouped_xauc_stats(b.preds, b.target)
    pairs = _pairs(s.sizes).sum()
    if int(pairs) == 0:
        return torch.tensor(math.nan, dtype=torch.float64, device=b.preds.device)
    return s.concordant.sum().to(torch.float64) / pairs.to(torch.float64)


def grouped_xauc_from_stats(stats: GroupXAUCStats) -> tuple[Tensor, Tensor]:
    """Size-weighted mean XAUC over groups of two or more: ``(value, groups counted)``."""
    valid = stats.sizes >= 2
    pairs = _pairs(stats.sizes).to(torch.float64)
    per = stats.concordant.to(torch.float64) / torch.where(valid, pairs, 1.0)
    w = torch.where(valid, stats.sizes, 0).to(torch.float64)
    total = w.sum()
    val = (per * w).sum() / torch.where(total > 0, total, 1.0)
    return torch.where(total > 0, val, math.nan), valid.sum()


def grouped_xauc(
    preds: Tensor, target: Tensor, grouping_key: Tensor, weights: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Exact XAUC of every group of >= 2 samples, averaged weighted by group size.

    ``weights``: each group's weighted XAUC (pairs weigh ``w_i w_j``), averaged weighted by
    the group's total weight.

    Returns ``(value, number of groups counted)``; NaN when no group has two samples.

    >>> p = torch.tensor([0.1, 0.2, 0.3, 0.9, 0.5])
    >>> t = torch.tensor([1.0, 2.0, 3.0, 1.0, 2.0])
    >>> v, c = grouped_xauc(p, t, torch.tensor([1, 1, 1, 2, 2]))
    >>> round(v.item(), 4), c.item()
    (0.6, 2)
    """
    b = validate_grouped(
        preds, target, grouping_key, weights, label_kind="real", metric_name="grouped_xauc"
    )
    if b.weights is not None:
        ws = weighted_xauc_stats(b.preds, b.target, b.keys, b.weights)
        return weighted_grouped_xauc_from_stats(ws)
    return grouped_xauc_from_stats(grouped_xauc_stats(b.preds, b.target, b.keys))


def _concordant(p: Tensor, t: Tensor, i: Tensor, j: Tensor) -> Tensor:
    return ((p[i] - p[j]).to(torch.float64) * (t[i] - t[j]).to(torch.float64)) > 0


def _weighted_mean(conc: Tensor, w: Tensor | None, i: Tensor, j: Tensor) -> Tensor:
    if w is None:
        return conc.to(torch.float64).mean()
    pw = w[i].to(torch.float64) * w[j].to(torch.float64)
    total = pw.sum()
    return torch.where(total > 0, (pw * conc).sum() / torch.where(total > 0, total, 1.0), math.nan)


def sampled_xauc(
    preds: Tensor,
    target: Tensor,
    *,
    sample_ratio: float = 1e-3,
    max_pairs: int | None = None,
    seed: int = 0,
    generator: torch.Generator | None = None,
    weights: Tensor | None = None,
) -> Tensor:
    """The reference's estimate: the concordant fraction of random distinct pairs.

    As the reference counts them: ``max_pairs`` pairs when it is given (``sample_ratio``
    is then ignored; at most the ``n (n - 1) / 2`` pairs there are), else
    ``max(1, floor(n (n - 1) / 2 * sample_ratio))``. Pairs are drawn uniformly among the
    ``n (n - 1) / 2`` unordered pairs, with replacement (tzrec's distribution), by
    ``generator`` (a CPU generator, advanced by the draw) or else by a new generator
    seeded by ``seed``. With ``weights`` a sampled pair counts ``w_i * w_j``.

    >>> p = torch.arange(100.0); round(sampled_xauc(p, p, sample_ratio=0.1).item(), 3)
    1.0
    >>> sampled_xauc(p, -p, max_pairs=7).item()
    0.0
    """
    n = int(preds.numel())
    if n < 2:
        return torch.tensor(math.nan, dtype=torch.float64, device=preds.device)
    total = n * (n - 1) // 2
    if max_pairs is not None:
        k = max(1, min(int(max_pairs), total))
    else:
        k = max(1, int(total * sample_ratio))
    gen = generator if generator is not None else torch.Generator().manual_seed(seed)
    i = torch.randint(0, n, (k,), generator=gen)
    j = (i + torch.randint(1, n, (k,), generator=gen)) % n
    i, j = i.to(preds.device), j.to(preds.device)
    return _weighted_mean(_concordant(preds, target, i, j), weights, i, j)


def sampled_grouped_xauc(
    preds: Tensor,
    target: Tensor,
    grouping_key: Tensor,
    *,
    max_pairs_per_group: int,
    seed: int = 0,
    generator: torch.Generator | None = None,
    weights: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Grouped XAUC estimated from ``min(max_pairs_per_group, n_g (n_g - 1) / 2)`` random
    distinct pairs per group (all groups at once), weighted by group size; pairs drawn
    by ``generator`` (advanced) or a new generator seeded by ``seed``. With ``weights``
    a sampled pair counts ``w_i w_j`` and a group weighs its total weight."""
    n = int(preds.numel())
    dev = preds.device
    if n == 0:
        return torch.tensor(math.nan, dtype=torch.float64, device=dev), torch.tensor(0)
    gid, _ = dense_ids(grouping_key.to(torch.int64))
    gsorted, order = torch.sort(gid, stable=True)
    p, t = preds[order], target[order]
    gstart = torch.ones(n, dtype=torch.int64, device=dev)
    gstart[1:] = (gsorted[1:] != gsorted[:-1]).to(torch.int64)
    seg = torch.cumsum(gstart, 0) - 1
    g = int(seg[-1]) + 1
    sizes = torch.bincount(seg, minlength=g)
    offsets = torch.cumsum(sizes, 0) - sizes
    valid = sizes >= 2
    k = torch.where(valid, torch.clamp(_pairs(sizes), max=int(max_pairs_per_group)), 0)
    pair_group = torch.repeat_interleave(torch.arange(g, device=dev), k)
    m = int(pair_group.numel())
    gen = generator if generator is not None else torch.Generator().manual_seed(seed)
    u1 = torch.rand(m, generator=gen, dtype=torch.float64).to(dev)
    u2 = torch.rand(m, generator=gen, dtype=torch.float64).to(dev)
    sz = sizes[pair_group]
    i = torch.clamp((u1 * sz).to(torch.int64), max=sz - 1)
    j = (i + 1 + torch.clamp((u2 * (sz - 1)).to(torch.int64), max=sz - 2)) % sz
    base = offsets[pair_group]
    conc = _concordant(p, t, base + i, base + j).to(torch.float64)
    if weights is None:
        hits = torch.zeros(g, dtype=torch.float64, device=dev).index_add_(0, pair_group, conc)
        per = hits / torch.where(valid, k, 1).to(torch.float64)
        w = torch.where(valid, sizes, 0).to(torch.float64)
    else:
        sw = weights[order].to(torch.float64)
        pw = sw[base + i] * sw[base + j]
        zeros = torch.zeros(g, dtype=torch.float64, device=dev)
        hits = zeros.clone().index_add_(0, pair_group, pw * conc)
        wpairs = zeros.clone().index_add_(0, pair_group, pw)
        valid = valid & (wpairs > 0)
        per = hits / torch.where(valid, wpairs, 1.0)
        gw = zeros.clone().index_add_(0, seg, sw)
        w = torch.where(valid, gw, 0.0)
    total = w.sum()
    val = (per * w).sum() / torch.where(total > 0, total, 1.0)
    return torch.where(total > 0, val, math.nan), valid.sum()
