"""CPU kernels in numpy for XAUC: concordant pairs counted by radix refinement.

Pairs ``i < j`` with ``r[i] < r[j]`` are counted per group in ``O(n log R)`` (one pass per
bit of the ranks, no pairs enumerated); :func:`grouped_xauc_np` and
:func:`weighted_xauc_np` pack group, target rank and prediction rank in one uint64 key
and sort it once (see :mod:`._numpy_kernels` for the key transforms).
"""

from __future__ import annotations

import numpy as np

from rankboard.service.metrics.functional._numpy_kernels import (
    _count_flags,
    _dense_rank,
    dense_ids_np,
    float_key_np,
)

__all__ = ["count_increasing_pairs_np", "grouped_xauc_np", "weighted_xauc_np"]


def _segments(g: np.ndarray | None, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Per element, the start and length of its group's run (``g`` non-decreasing; None:
    one group)."""
    if g is None:
        return np.zeros(n, dtype=np.int64), np.full(n, n, dtype=np.int64)
    gst = np.flatnonzero(np.concatenate(([True], g[1:] != g[:-1])))
    sizes = np.diff(np.append(gst, n))
    return np.repeat(gst, sizes), np.repeat(sizes, sizes)


def _partition(
    bit: np.ndarray,
    czp: np.ndarray,
    start: np.ndarray,
    length: np.ndarray,
    zs: np.ndarray,
    zb: np.ndarray,
    idx: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One level's stable partition of every segment, zeros first: each element's new
    position, and its new segment's start and length (``czp``: cumulative zeros, ``zs``
    zeros before the segment, ``zb`` zeros before the element within it)."""
    zseg = czp[start + length] - zs
    ones = bit.astype(bool)
    pos = np.where(ones, start + zseg + (idx - start - zb), start + zb)
    new_start = np.where(ones, start + zseg, start)
    new_len = np.where(ones, length - zseg, zseg)
    return pos, new_start, new_len


def _scatter(pos: np.ndarray, *arrays: np.ndarray) -> list[np.ndarray]:
    """Each array moved to the positions ``pos`` (``out[pos] = a``)."""
    moved = []
    for a in arrays:
        out = np.empty_like(a)
        out[pos] = a
        moved.append(out)
    return moved


def count_increasing_pairs_np(
    r: np.ndarray, g: np.ndarray | None, num_groups: int, w: np.ndarray | None = None
) -> np.ndarray:
    """Per group, pairs ``i < j`` with ``r[i] < r[j]``; ``g`` non-decreasing group ids.

    Radix refinement from the top bit: each element keeps the start and length of its
    segment (same group, same higher bits); a level counts, for every element with bit 1,
    the elements with bit 0 before it in its segment, then stably partitions segments.
    With weights ``w`` a pair counts ``w[i] * w[j]`` (float64 result).
    """
    if w is not None:
        return _weighted_increasing_pairs_np(r, g, num_groups, w.astype(np.float64))
    n = r.size
    out = np.zeros(num_groups, dtype=np.float64)
    if n < 2:
        return out.astype(np.int64)
    idx = np.arange(n, dtype=np.int64)
    start, length = _segments(g, n)
    cur = r.astype(np.int64)
    czp = np.zeros(n + 1, dtype=np.int64)
    total = 0
    for b in range(int(cur.max()).bit_length() - 1, -1, -1):
        bit = (cur >> b) & 1
        zero = 1 - bit
        np.cumsum(zero, out=czp[1:])
        zs = czp[start]
        zb = czp[:-1] - zs  # zeros before, within the segment
        contrib = zb * bit
        if g is None:
            total += int(contrib.sum())
        else:
            out += np.bincount(g, weights=contrib, minlength=num_groups)
        if b == 0:
            break
        pos, new_start, new_len = _partition(bit, czp, start, length, zs, zb, idx)
        cur, start, length = _scatter(pos, cur, new_start, new_len)
    if g is None:
        return np.array([total], dtype=np.int64)
    return np.rint(out).astype(np.int64)


def _weighted_increasing_pairs_np(
    r: np.ndarray, g: np.ndarray | None, num_groups: int, w: np.ndarray
) -> np.ndarray:
    n = r.size
    out = np.zeros(num_groups, dtype=np.float64)
    if n < 2:
        return out
    idx = np.arange(n, dtype=np.int64)
    start, length = _segments(g, n)
    if g is None:
        g = np.zeros(n, dtype=np.int64)
    cur = r.astype(np.int64)
    czp = np.zeros(n + 1, dtype=np.int64)
    cwz = np.zeros(n + 1, dtype=np.float64)
    for b in range(int(cur.max()).bit_length() - 1, -1, -1):
        bit = (cur >> b) & 1
        zero = 1 - bit
        np.cumsum(zero, out=czp[1:])
        np.cumsum(w * zero, out=cwz[1:])
        zs = czp[start]
        zb = czp[:-1] - zs
        wzb = cwz[:-1] - cwz[start]  # weight of the zeros before, within the segment
        out += np.bincount(g, weights=wzb * w * bit, minlength=num_groups)
        if b == 0:
            break
        pos, new_start, new_len = _partition(bit, czp, start, length, zs, zb, idx)
        cur, w, start, length = _scatter(pos, cur, w, new_start, new_len)
    return out


def _pack(
    gid: np.ndarray, gbits: int, trank: np.ndarray, tbits: int, desc: np.ndarray, rbits: int
) -> np.ndarray:
    """``(group, target rank, descending prediction rank)`` packed in one uint64 key."""
    if gbits + tbits + rbits > 64:
        raise OverflowError("keys too wide to pack")
    return (gid << np.uint64(tbits + rbits)) | (trank.astype(np.uint64) << np.uint64(rbits)) | desc


def _unpack(key: np.ndarray, pm: int, tbits: int, rbits: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Of sorted packed keys: the ascending prediction ranks, each key's group segment
    (0, 1, ... in order) and the number of segments."""
    mask = (np.uint64(1) << np.uint64(rbits)) - np.uint64(1)
    r = (np.uint64(pm - 1) - (key & mask)).astype(np.int64)
    gs = (key >> np.uint64(tbits + rbits)).astype(np.int64)
    gstart = np.concatenate(([True], gs[1:] != gs[:-1]))
    seg = _count_flags(gstart) - 1
    return r, seg, int(seg[-1]) + 1


def weighted_xauc_np(
    preds: np.ndarray, target: np.ndarray, groups: np.ndarray | None, weights: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per group ``(sum of w_i w_j over concordant pairs, over all pairs, sum of w)``
    (float64), groups ascending; concordant as in :func:`grouped_xauc_np`."""
    n = preds.size
    if n == 0:
        z = np.zeros(0 if groups is not None else 1)
        return z, z.copy(), z.copy()
    prank, pm = _dense_rank(float_key_np(preds))
    rbits = max(1, int(pm - 1).bit_length())
    desc = np.uint64(pm - 1) - prank.astype(np.uint64)
    trank, tm = _dense_rank(float_key_np(target))
    tbits = max(1, int(tm - 1).bit_length())
    if groups is None:
        gid, gbits = np.zeros(n, dtype=np.uint64), 0
    else:
        gid, bound = dense_ids_np(groups)
        gbits = max(1, int(bound - 1).bit_length())
    key = _pack(gid, gbits, trank, tbits, desc, rbits)
    order = np.argsort(key, kind="stable")
    key = key[order]
    w = weights[order].astype(np.float64)
    r, seg, num = _unpack(key, pm, tbits, rbits)
    wsum = np.bincount(seg, weights=w, minlength=num)
    w2 = np.bincount(seg, weights=w * w, minlength=num)
    conc = _weighted_increasing_pairs_np(r, seg, num, w)
    return conc, (wsum * wsum - w2) / 2, wsum


def grouped_xauc_np(
    preds: np.ndarray, target: np.ndarray, groups: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    """Per-group ``(concordant pairs, sizes)`` (int64), groups ascending."""
    n = preds.size
    prank, pm = _dense_rank(float_key_np(preds))
    rbits = max(1, int(pm - 1).bit_length())
    desc = np.uint64(pm - 1) - prank.astype(np.uint64)
    if groups is None:
        key = np.sort((float_key_np(target) << np.uint64(32)) | desc)
        r = (np.uint64(pm - 1) - (key & np.uint64(0xFFFFFFFF))).astype(np.int64)
        return count_increasing_pairs_np(r, None, 1), np.array([n], dtype=np.int64)
    gid, bound = dense_ids_np(groups)
    gbits = max(1, int(bound - 1).bit_length())
    trank, tm = _dense_rank(float_key_np(target))
    tbits = max(1, int(tm - 1).bit_length())
    key = _pack(gid, gbits, trank, tbits, desc, rbits)
    key = np.sort(key)
    r, seg, num = _unpack(key, pm, tbits, rbits)
    sizes = np.bincount(seg, minlength=num).astype(np.int64)
    return count_increasing_pairs_np(r, seg, num), sizes
