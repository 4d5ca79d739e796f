"""CPU kernels in numpy for the sort-based metrics.

Sorting packed 64-bit keys with ``np.sort`` (vectorised, no permutation needed because the
payload rides in the low bits) is several times faster here than an argsort, and numpy's
elementwise passes are cheaper than torch's on the CPU. The torch versions in
:mod:`.grouped_auc` / :mod:`.xauc` serve other devices; tests check both agree.

Here: the key transforms every kernel uses and grouped AUC; the pair-counting kernels of
XAUC are in :mod:`._numpy_pairs`.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "dense_ids_np",
    "float_key_np",
    "grouped_auc_np",
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
