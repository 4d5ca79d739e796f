"""Order-preserving integer keys for float tensors, so sorts run on int64 (radix) keys."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["dense_ids", "float_sort_key"]


def float_sort_key(x: Tensor) -> Tensor:
    """Map finite float32 values to int64 in ``[0, 2**32)`` preserving order and ties.

    ``-0.0`` and ``0.0`` map to the same key.

    >>> float_sort_key(torch.tensor([-1.5, -0.0, 0.0, 2.0])).argsort().tolist()
    [0, 1, 2, 3]
    >>> k = float_sort_key(torch.tensor([-0.0, 0.0])); bool(k[0] == k[1])
    True
    """
    bits = (x.to(torch.float32) + 0.0).view(torch.int32).to(torch.int64)
    bits = torch.where(bits < 0, bits ^ 0x7FFFFFFF, bits)
    return bits + (1 << 31)


def dense_ids(keys: Tensor) -> tuple[Tensor, int]:
    """Non-negative ids below ``2**31`` that order like ``keys``, and an upper bound on them.

    Uses ``keys - min`` when the range fits (no sort), else the inverse of ``unique``.

    >>> ids, bound = dense_ids(torch.tensor([7, 3, 7, 5])); ids.tolist(), bound
    ([4, 0, 4, 2], 5)
    """
    if keys.numel() == 0:
        return keys.to(torch.int64), 1
    lo, hi = torch.aminmax(keys)
    lo_i, hi_i = int(lo), int(hi)
    if hi_i - lo_i < (1 << 31) - 1:
        return keys - lo_i, hi_i - lo_i + 1
    uniq, inv = torch.unique(keys, return_inverse=True)
    return inv, int(uniq.numel())
