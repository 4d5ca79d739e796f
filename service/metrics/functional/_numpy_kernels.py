"""CPU kernels in numpy for the sort-based metrics.

Sorting packed 64-bit keys with ``np.sort`` (vectorised, no permutation needed because the
payload rides in the low bits) is several times faster here than an argsort, and numpy's
elementwise passes are cheaper than torch's on the CPU. The torch versions in
:mod:`.grouped_auc` / :mod:`.xauc` serve other devices; tests check both agree.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "count_increasing_pairs_np",
    "dense_ids_np",
    "float_key_np",
    "grouped_auc_np",
    "grouped_xauc_np",
    "weighted_xauc_np",
]


def float_key_np(x: np.ndarray) -> np.ndarray:
    """Order-preserving uint64 in ``[0, 2**32)`` of finite float32 values (-0.0 == 0.0)."""
    bits = np.add(x, np.float32(0.0), dtype=np.float32).view(np.int32)  # a copy; -0.0 -> 0.0
    # negatives: flip the 31 value bits (mask 0x7FFFFFFF from the arithmetic sign shift)
    bits ^= (bits >> 31) & 0x7FFFFFFF
    out = bits.astype(np.int64)
    out += 1 << 31
    return out.view(np.uint64)


def _count_flags(flags: np.ndarray) -> np.ndarray:
    """Running count (int64) of the True values of a boolean array.

    ``np.cumsum`` of a boolean array casts while it accumulates and holds the GIL for
    the whole pass (200 ms at 10M values, stalling the service's other threads); a cast
    first and an int64 cumsum release it.

    >>> _count_flags(np.array([True, False, True])).tolist()
    [1, 1, 2]
    """
    return np.cumsum(flags.astype(np.int64))


def dense_ids_np(keys: np.ndarray) -> tuple[np.ndarray, int]:
    """Ids ``keys - min`` when the range is small, else dense ranks; and their bound.

    >>> ids, bound = dense_ids_np(np.array([7, -2**60, 7, 2**61]))
    >>> ids.tolist(), bound
    ([1, 0, 1, 2], 3)
    """
    if keys.size == 0:
        return keys.astype(np.uint64), 1
    lo, hi = int(keys.min()), int(keys.max())
    if hi - lo < keys.size * 4 + 1024:
        return (keys - lo).astype(np.uint64), hi - lo + 1
    # dense ranks by an argsort (np.unique(return_inverse=True) holds the GIL for
    # 200 ms of a 10M-key pass; argsort, gathers and an int64 cumsum release it)
    order = np.argsort(keys)
    sk = keys[order]
    change = np.empty(keys.size, dtype=np.int64)
    change[0] = 0
    np.not_equal(sk[1:], sk[:-1], out=change[1:], casting="unsafe")
    rank = np.cumsum(change)
    out = np.empty(keys.size, dtype=np.uint64)
    out[order] = rank
    return out, int(rank[-1]) + 1


def _dense_rank(key: np.ndarray) -> tuple[np.ndarray, int]:
    """Dense rank (ascending) of uint64 keys below 2**32, via one packed sort."""
    n = key.size
    sh = np.uint64(max(1, int(n - 1).bit_length()))
    packed = key << sh
    packed |= np.arange(n, dtype=np.uint64)
    packed.sort()  # in place: no second 8n-byte array
    order = (packed & ((np.uint64(1) << sh) - np.uint64(1))).view(np.int64)
    packed >>= sh
    sk = packed
    change = np.empty(n, dtype=np.int64)
    change[0] = 0
    np.not_equal(sk[1:], sk[:-1], out=change[1:], casting="unsafe")
    r = np.cumsum(change)
    out = np.empty(n, dtype=np.int64)
    out[order] = r
    return out, int(r[-1]) + 1


def grouped_auc_np(
    preds: np.ndarray,
    target: np.ndarray,
    groups: np.ndarray | None,
    weights: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-group ``(2 U, positives, negatives)``, groups ascending: int64 unweighted,
    float64 with ``weights``.

    Unweighted, the target rides in the sorted key. Weighted, the weights need the
    permutation: the sample index rides in the key instead, behind the dense rank of the
    prediction (one more packed sort) when group, rank and index bits fit in 64; else an
    argsort (several times slower than a packed sort here).
    """
    n = preds.size
    if weights is not None:
        return _grouped_auc_weighted_np(preds, target, groups, weights)
    # one packed key (group, prediction, label), sorted in place; every step in place or
    # into one fresh array: at 10M samples each new 80 MB array costs page faults
    key = float_key_np(preds)
    if groups is not None:
        gid, bound = dense_ids_np(groups)
        if int(bound - 1).bit_length() > 30:
            raise OverflowError("too many groups to pack")
        gid <<= np.uint64(32)
        key |= gid
        del gid
    key <<= np.uint64(1)
    key |= (target != 0).view(np.uint8)
    key.sort()
    cpos = np.empty(n + 1, dtype=np.int64)
    cpos[0] = 0
    np.bitwise_and(key, np.uint64(1), out=cpos[1:], casting="unsafe")
    np.cumsum(cpos[1:], out=cpos[1:])
    seg = key
    seg >>= np.uint64(1)
    change = np.empty(n, dtype=np.bool_)
    change[0] = True
    np.not_equal(seg[1:], seg[:-1], out=change[1:])
    starts = np.flatnonzero(change)
    del change
    ends = np.empty_like(starts)
    ends[:-1] = starts[1:]
    ends[-1] = n
    cpos_start = cpos[starts]
    pos_s = cpos[ends] - cpos_start
    del cpos
    neg_s = ends - starts
    neg_s -= pos_s
    del ends
    cneg_before = starts - cpos_start
    if groups is None:
        u2 = np.array([np.sum(pos_s * (2 * cneg_before + neg_s))])
        return u2, np.array([pos_s.sum()]), np.array([neg_s.sum()])
    sg = seg[starts] >> np.uint64(32)
    return _reduce_groups(sg, pos_s, neg_s, cneg_before, int_result=True)


def _reduce_groups(
    sg: np.ndarray,
    pos_s: np.ndarray,
    neg_s: np.ndarray,
    cneg_before: np.ndarray,
    *,
    int_result: bool,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-group ``(2 U, pos, neg)`` from tie segments sorted by (group, prediction)."""
    # segments are sorted by group: per-group sums are reduceat over contiguous runs (a
    # bincount with float weights took 0.34 s of a 10M / 1M-group compute, this 0.02 s)
    gstart = np.empty(sg.size, dtype=np.bool_)
    gstart[0] = True
    np.not_equal(sg[1:], sg[:-1], out=gstart[1:])
    first = np.flatnonzero(gstart)
    del gstart
    pos_g = np.add.reduceat(pos_s, first)
    neg_g = np.add.reduceat(neg_s, first)
    if int_result:
        # exact in int64: sum of pos_s (2 cneg_before + neg_s) over the group's segments,
        # less 2 pos_g times the negatives before the group
        v = 2 * cneg_before
        v += neg_s
        v *= pos_s
        u2 = np.add.reduceat(v, first)
        u2 -= 2 * cneg_before[first] * pos_g
        return u2, pos_g, neg_g
    # float weights: offsets relative to the group's start first (no cancellation of
    # large running sums)
    rel = cneg_before - np.repeat(cneg_before[first], np.diff(first, append=sg.size))
    rel *= 2
    rel += neg_s
    rel *= pos_s
    return np.add.reduceat(rel, first), pos_g, neg_g


_PACK_BITS = 64  # tests lower it to take the argsort path


def _grouped_auc_weighted_np(
    preds: np.ndarray, target: np.ndarray, groups: np.ndarray | None, weights: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    # in-place operations where possible: at 10M samples every fresh 80 MB array costs
    # page faults comparable to the arithmetic
    n = preds.size
    gbits = 0
    gid = None
    if groups is not None:
        gid, bound = dense_ids_np(groups)
        gbits = int(bound - 1).bit_length()
    prank, pm = _dense_rank(float_key_np(preds))
    rbits = max(1, int(pm - 1).bit_length())
    ibits = max(1, int(n - 1).bit_length())
    tb = np.uint64(ibits)  # the target bit sits just above the index
    if gbits + rbits + 1 + ibits <= _PACK_BITS:
        key = prank.view(np.uint64)
        key <<= np.uint64(ibits + 1)
        if gid is not None:
            gid <<= np.uint64(rbits + 1 + ibits)
            key |= gid
            del gid
        key |= (target != 0).view(np.uint8).astype(np.uint64) << tb
        key |= np.arange(n, dtype=np.uint64)
        key.sort()
        order = (key & np.uint64((1 << ibits) - 1)).view(np.int64)
        key >>= tb
        t = (key & np.uint64(1)).view(np.int64) != 0
        key >>= np.uint64(1)
        seg = key
        gshift = rbits
    else:
        if gbits > 31:
            raise OverflowError("too many groups to pack")
        key = float_key_np(preds)
        if gid is not None:
            key |= gid << np.uint64(32)
        order = np.argsort(key)
        seg = key[order]
        t = target[order] != 0
        gshift = 32
    wo = weights[order]
    del order
    cw = np.zeros(n + 1, dtype=np.float64)
    np.cumsum(wo, dtype=np.float64, out=cw[1:])
    wo[~t] = 0
    cpos = np.zeros(n + 1, dtype=np.float64)
    np.cumsum(wo, dtype=np.float64, out=cpos[1:])
    del wo, t
    starts = np.flatnonzero(np.concatenate(([True], seg[1:] != seg[:-1])))
    ends = np.append(starts[1:], n)
    pos_s = cpos[ends] - cpos[starts]
    neg_s = cw[ends]
    neg_s -= cw[starts]
    neg_s -= pos_s
    cneg_before = cw[starts]
    cneg_before -= cpos[starts]
    if groups is None:
        u2 = np.array([np.sum(pos_s * (2 * cneg_before + neg_s))])
        return u2, np.array([pos_s.sum()]), np.array([neg_s.sum()])
    sg = seg[starts] >> np.uint64(gshift)
    return _reduce_groups(sg, pos_s, neg_s, cneg_before, int_result=False)


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
