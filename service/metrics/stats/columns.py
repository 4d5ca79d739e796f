"""One arm's samples of one eval step, as CPU numpy columns, and input checks.

Everything in :mod:`rankboard.service.metrics.stats` works on :class:`Columns`: the
predictions, targets, optional weights, grouping-key columns and sample ids of one arm.
Torch tensors are accepted and converted (``detach().cpu().numpy()``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["Columns", "StatsInputError", "as_numpy"]


class StatsInputError(ValueError):
    """A bad argument of the statistics layer; ``field`` names it (e.g. ``"alpha"``).

    >>> err = StatsInputError("alpha", "alpha must be in (0, 0.5], got 0.7")
    >>> err.field, str(err)
    ('alpha', 'alpha must be in (0, 0.5], got 0.7')
    """

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


def as_numpy(x: Any) -> np.ndarray:
    """A numpy view or copy of a numpy array, torch tensor or array-like.

    >>> import torch
    >>> as_numpy(torch.tensor([1.0, 2.0])).tolist()
    [1.0, 2.0]
    """
    if isinstance(x, np.ndarray):
        return x
    detach = getattr(x, "detach", None)
    if detach is not None:
        return detach().cpu().numpy()
    return np.asarray(x)


def _column(value: Any, n: int, field: str, what: str, *, integer: bool = False) -> np.ndarray:
    """A ``(n,)`` column (int64 with ``integer``); ``StatsInputError`` naming ``field``."""
    arr = as_numpy(value)
    if arr.shape != (n,):
        raise StatsInputError(field, f"{what} must have shape ({n},), got {arr.shape}")
    if not integer:
        return arr
    if not np.issubdtype(arr.dtype, np.integer):
        raise StatsInputError(field, f"{what} must be integers, got {arr.dtype}")
    return arr.astype(np.int64, copy=False)


@dataclass(frozen=True)
class Columns:
    """One arm's samples of one eval step, all numpy on the CPU.

    ``preds`` ``(n,)`` or ``(n, C)``; ``target`` ``(n,)`` (or ``(n, C)`` relevance);
    ``weights`` ``(n,)`` or None (unit weights); ``keys`` grouping-key columns by name,
    int64 ``(n,)``; ``sample_ids`` int64 ``(n,)`` or None. Lengths are checked
    (``StatsInputError`` naming the column).

    >>> c = Columns(np.array([0.2, 0.7]), np.array([0, 1]), keys={"user_id": [5, 5]})
    >>> c.n, c.keys["user_id"].dtype
    (2, dtype('int64'))
    """

    preds: np.ndarray
    target: np.ndarray
    weights: np.ndarray | None = None
    keys: Mapping[str, np.ndarray] = field(default_factory=dict)
    sample_ids: np.ndarray | None = None

    def __post_init__(self) -> None:
        preds = as_numpy(self.preds)
        target = as_numpy(self.target)
        n = int(preds.shape[0]) if preds.ndim else 0
        if preds.ndim not in (1, 2):
            raise StatsInputError("preds", f"preds must be (n,) or (n, C), got {preds.shape}")
        if target.shape[0] != n:
            raise StatsInputError("target", f"target has {target.shape[0]} rows, preds {n}")
        weights = None if self.weights is None else _column(self.weights, n, "weights", "weights")
        keys = {
            name: _column(col, n, f"keys.{name}", f"key column {name!r}", integer=True)
            for name, col in dict(self.keys).items()
        }
        ids = None
        if self.sample_ids is not None:
            ids = _column(self.sample_ids, n, "sample_ids", "sample_ids", integer=True)
        object.__setattr__(self, "preds", preds)
        object.__setattr__(self, "target", target)
        object.__setattr__(self, "weights", weights)
        object.__setattr__(self, "keys", keys)
        object.__setattr__(self, "sample_ids", ids)

    @property
    def n(self) -> int:
        """Number of samples."""
        return int(self.preds.shape[0])

    def key(self, name: str) -> np.ndarray:
        """The key column ``name``; ``StatsInputError`` (field ``cluster``) if absent."""
        try:
            return self.keys[name]
        except KeyError:
            have = ", ".join(sorted(self.keys)) or "none"
            raise StatsInputError(
                "cluster", f"cluster: no key column {name!r} (columns: {have})"
            ) from None
