"""The float64 sums of the streaming metrics (NE, log loss, MSE, MAE, RMSE, R², binary
accuracy) in one pass each, without fresh temporaries.

On the CPU every sum runs as a few numpy ufuncs in place on a per-thread float64 scratch
(allocated once, grown to the largest batch up to :data:`_KEEP_MAX` samples): the inputs
are read where they lie (zero-copy views of the float32 tensors), nothing of size ``n``
is allocated per batch, and numpy's float64 ``log`` is about 3x torch's here (6 vs 18 µs
for 8,192 samples). No ``np.dot``: it goes to a threaded BLAS, which stalls for
milliseconds on a loaded machine. On other devices the torch expression runs (one sync-free graph).
Results: Python floats on the CPU, 0-d float64 tensors elsewhere; either adds into a
metric's float64 state.

>>> import torch
>>> ce, pos, w = logloss_sums(torch.tensor([0.5, 0.5]), torch.tensor([0.0, 1.0]), None, 1e-12)
>>> round(ce, 6), pos, w
(1.386294, 1.0, 2.0)
"""

from __future__ import annotations

import threading

import numpy as np
import torch
from torch import Tensor

__all__ = ["binary_correct_sums", "error_sums", "logloss_sums"]

Number = float | Tensor

_local = threading.local()
# CPU tensors take the numpy kernels; tests flip this to check that the torch code used on
# other devices agrees
_use_numpy = True
# a thread keeps scratch for batches up to this many samples; larger ones get a fresh array
_KEEP_MAX = 1 << 18  # 2 MB per float64 slot: 6.5 MB a thread at most


def _scratch(n: int, slot: int, dtype: type = np.float64) -> np.ndarray:
    """An array of ``n`` elements owned by this thread (float64 slots 0-2, bool 3-4)."""
    bufs: list[np.ndarray] | None = getattr(_local, "bufs", None)
    if bufs is None:
        bufs = _local.bufs = [np.empty(0, dtype=np.float64)] * 3 + [np.empty(0, np.bool_)] * 2
    buf = bufs[slot]
    if buf.size < n:
        if n > _KEEP_MAX:
            return np.empty(n, dtype=dtype)
        size = min(max(n, 2 * buf.size, 4096), _KEEP_MAX)
        buf = bufs[slot] = np.empty(size, dtype=dtype)
    return buf[:n]


def _np(x: Tensor) -> np.ndarray:
    out: np.ndarray = x.detach().numpy()
    return out


def logloss_sums(
    preds: Tensor, target: Tensor, weights: Tensor | None, eta: float
) -> tuple[Number, Number, Number]:
    """``(sum w * logloss, sum w * y, sum w)`` in float64; preds clamped to
    ``[eta, 1 - eta]``, labels 0/1 (unchecked inputs).

    The loss is torchrec's: ``-log(p)`` for a positive, ``-log(1 - p)`` for a negative,
    on the clamped ``p``: one log per sample, of ``p`` or ``1 - p`` picked by the label.
    """
    n = int(preds.shape[0])
    if preds.device.type != "cpu" or not _use_numpy:
        tp = preds.to(torch.float64).clamp(eta, 1.0 - eta)
        ty = target.to(torch.float64)
        ce = torch.where(ty > 0, tp, 1.0 - tp).log_().neg_()
        if weights is None:
            return ce.sum(), ty.sum(), torch.tensor(float(n), dtype=torch.float64)
        tw = weights.to(torch.float64)
        return (ce * tw).sum(), (ty * tw).sum(), tw.sum()
    y = _np(target)
    p = _scratch(n, 0)
    np.copyto(p, _np(preds))
    np.clip(p, eta, 1.0 - eta, out=p)
    # q = p for a positive, 1 - p for a negative, as (2y - 1) p + (1 - y): exact for a
    # positive (p + 0), the one rounding of torchrec's 1 - p for a negative. (A masked
    # copy is 10x slower here: it branches per element.)
    q = _scratch(n, 1)
    r = _scratch(n, 2)
    np.copyto(q, y)
    np.subtract(1.0, q, out=r)
    np.multiply(q, 2.0, out=q)
    np.subtract(q, 1.0, out=q)
    np.multiply(q, p, out=q)
    np.add(q, r, out=q)
    np.log(q, out=q)
    if weights is None:
        return -float(q.sum()), float(np.count_nonzero(y)), float(n)
    # products in place, then sums: np.dot goes to a threaded BLAS, which stalls for
    # milliseconds on a loaded 2-core machine
    np.copyto(r, _np(weights))
    total = float(r.sum())
    np.multiply(q, r, out=q)
    np.copyto(p, y)
    np.multiply(p, r, out=p)
    return -float(q.sum()), float(p.sum()), total


def error_sums(
    preds: Tensor, target: Tensor, weights: Tensor | None, squared: bool
) -> tuple[Number, Number]:
    """``(sum w * error, sum w)`` in float64, error ``(p - y) ** 2`` or ``|p - y|``
    (unchecked inputs)."""
    n = int(preds.shape[0])
    if preds.device.type != "cpu" or not _use_numpy:
        d = preds.to(torch.float64) - target.to(torch.float64)
        e = d * d if squared else d.abs()
        if weights is None:
            return e.sum(), torch.tensor(float(n), dtype=torch.float64)
        tw = weights.to(torch.float64)
        return (e * tw).sum(), tw.sum()
    s = _scratch(n, 0)
    np.copyto(s, _np(preds))
    np.subtract(s, _np(target), out=s)
    if squared:
        np.multiply(s, s, out=s)
    else:
        np.abs(s, out=s)
    if weights is None:
        return float(s.sum()), float(n)
    w = _scratch(n, 1)
    np.copyto(w, _np(weights))
    total = float(w.sum())
    np.multiply(s, w, out=s)
    return float(s.sum()), total


def binary_correct_sums(
    preds: Tensor, target: Tensor, weights: Tensor | None, threshold: float, inclusive: bool
) -> tuple[Number, Number]:
    """``(sum w [correct], sum w)`` for 0/1 labels, predicted positive when ``preds >
    threshold`` (``>=`` with ``inclusive``); counts (ints) without weights."""
    n = int(preds.shape[0])
    if preds.device.type != "cpu" or not _use_numpy:
        tpos = preds >= threshold if inclusive else preds > threshold
        tok = tpos == target.to(torch.bool)
        if weights is None:
            return tok.sum(), torch.tensor(n)
        tw = weights.to(torch.float64)
        return (tw * tok).sum(), tw.sum()
    pos = _scratch(n, 3, np.bool_)
    label = _scratch(n, 4, np.bool_)
    (np.greater_equal if inclusive else np.greater)(_np(preds), threshold, out=pos)
    np.not_equal(_np(target), 0, out=label)
    ok = np.equal(pos, label, out=pos)
    if weights is None:
        return int(np.count_nonzero(ok)), n
    w = _scratch(n, 1)
    np.copyto(w, _np(weights))
    total = float(w.sum())
    np.multiply(w, ok, out=w)
    return float(w.sum()), total
