"""The samples of one eval step, column by column: what the A/B statistics read.

Point metrics keep only what their value needs (binned AUC a histogram, NE three
sums), but an interval needs the samples themselves: per-sample influence values,
cluster keys (e.g. the user) and sample ids (to pair two arms that scored the same
eval set). A :class:`SampleColumns` keeps them as lists of chunk tensors that are only
ever appended to, like the exact metrics' states: snapshots share the chunks instead of
copying them, and a checkpoint writes each chunk once (by identity, so a chunk shared
with an exact metric's state is written once too).

Example::

    >>> import torch
    >>> cols = SampleColumns()
    >>> cols.append(torch.tensor([0.2, 0.7]), torch.tensor([0, 1]), None,
    ...             {"user_id": torch.tensor([7, 8])}, torch.tensor([10, 11]))
    >>> view = cols.view()
    >>> view.preds.tolist(), view.keys["user_id"].tolist(), view.sample_ids.tolist()
    ([0.20000000298023224, 0.699999988079071], [7, 8], [10, 11])
    >>> cols.nbytes  # float32 pred + float32 label + int64 key + int64 id, 2 samples
    48
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

if TYPE_CHECKING:
    from rankboard.service.metrics.stats import Columns

__all__ = ["SampleColumns"]


def _as(values: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return values.detach().to("cpu", dtype)


class SampleColumns:
    """Append-only columns of one eval step: preds, labels, weights, keys, sample ids.

    Columns that some batches lack are kept per chunk as empty tensors: unit weights,
    or no sample id (then the step has no usable ids: :meth:`view` gives None).
    """

    def __init__(self) -> None:
        self.preds: list[torch.Tensor] = []
        self.target: list[torch.Tensor] = []
        self.weights: list[torch.Tensor] = []
        self.keys: dict[str, list[torch.Tensor]] = {}
        self.sample_ids: list[torch.Tensor] = []
        self.samples = 0
        self._key_rows: dict[str, int] = {}  # rows each key column holds (O(1) to ask)

    def append(
        self,
        preds: torch.Tensor,
        target: torch.Tensor,
        weights: torch.Tensor | None,
        keys: Mapping[str, torch.Tensor],
        sample_ids: torch.Tensor | None,
    ) -> None:
        """Add one validated segment's samples (kept on the CPU, compact dtypes)."""
        n = int(target.shape[0])
        multiclass = preds.dim() == 2
        self.preds.append(_as(preds, torch.float32))
        self.target.append(_as(target, torch.int64 if multiclass else torch.float32))
        empty_f = torch.empty(0, dtype=torch.float32)
        empty_i = torch.empty(0, dtype=torch.int64)
        self.weights.append(empty_f if weights is None else _as(weights, torch.float32))
        for name in set(self.keys) | set(keys):
            chunks = self.keys.setdefault(name, [empty_i] * len(self.target[:-1]))
            given = keys.get(name)
            chunks.append(empty_i if given is None else _as(given, torch.int64))
            self._key_rows[name] = self._key_rows.get(name, 0) + int(chunks[-1].numel())
        self.sample_ids.append(empty_i if sample_ids is None else _as(sample_ids, torch.int64))
        self.samples += n

    def complete_keys(self) -> list[str]:
        """Names of the key columns every sample has, sorted (O(columns), not O(chunks)).

        >>> cols = SampleColumns()
        >>> u = {"u": torch.tensor([3])}
        >>> cols.append(torch.tensor([0.2]), torch.tensor([1]), None, u, None)
        >>> cols.append(torch.tensor([0.4]), torch.tensor([0]), None, {}, None)
        >>> cols.complete_keys()
        []
        """
        # read without the store's lock: a key's rows are counted before the samples of
        # an append, so a complete column never looks short in between
        samples = self.samples
        return sorted(k for k, rows in list(self._key_rows.items()) if rows >= samples)

    def _count_key_rows(self) -> None:
        self._key_rows = {k: sum(int(c.numel()) for c in v) for k, v in self.keys.items()}

    @property
    def nbytes(self) -> int:
        """Bytes held by the chunks."""
        chunks = [*self.preds, *self.target, *self.weights, *self.sample_ids]
        chunks += [c for col in self.keys.values() for c in col]
        return sum(c.numel() * c.element_size() for c in chunks)

    def view(self) -> Columns:
        """All samples as numpy :class:`~rankboard.service.metrics.stats.Columns`.

        A column that some chunks lack is None (weights: unit where missing); a key
        column that some chunks lack is left out.
        """
        from rankboard.service.metrics.stats import Columns  # the statistics layer's type

        n = self.samples
        preds = _cat(self.preds, np.float32)
        target = _cat(self.target, np.float32)
        weights = None
        if any(w.numel() for w in self.weights):
            weights = np.concatenate(
                [
                    w.numpy() if w.numel() else np.ones(len(t), np.float32)
                    for w, t in zip(self.weights, self.target, strict=True)
                ]
            )
        keys = {name: _cat(self.keys[name], np.int64) for name in self.complete_keys()}
        ids = _cat(self.sample_ids, np.int64)
        return Columns(
            preds=preds,
            target=target,
            weights=weights,
            keys=keys,
            sample_ids=ids if ids.shape[0] == n and n else None,
        )

    def mark(self) -> tuple[int, int, set[str]]:
        """A point to :meth:`truncate` back to (chunks held, samples, key columns)."""
        return len(self.target), self.samples, set(self.keys)

    def truncate(self, mark: tuple[int, int, set[str]]) -> None:
        """Drop what was appended since :meth:`mark` (an apply that failed half way).

        >>> import torch
        >>> cols = SampleColumns()
        >>> cols.append(torch.tensor([0.2]), torch.tensor([1]), None, {}, None)
        >>> point = cols.mark()
        >>> u = {"u": torch.tensor([3])}
        >>> cols.append(torch.tensor([0.4]), torch.tensor([0]), None, u, None)
        >>> cols.truncate(point); cols.samples, sorted(cols.keys), len(cols.preds)
        (1, [], 1)
        """
        chunks, samples, keys = mark
        for col in (self.preds, self.target, self.weights, self.sample_ids):
            del col[chunks:]
        for name in list(self.keys):
            if name in keys:
                del self.keys[name][chunks:]
            else:
                del self.keys[name]
        self.samples = samples
        self._count_key_rows()

    def copy(self) -> SampleColumns:
        """A copy sharing the chunks (they are never changed in place)."""
        new = SampleColumns()
        new.preds, new.target, new.weights = list(self.preds), list(self.target), list(self.weights)
        new.keys = {k: list(v) for k, v in self.keys.items()}
        new.sample_ids = list(self.sample_ids)
        new.samples = self.samples
        new._key_rows = dict(self._key_rows)
        return new

    def state(self) -> dict[str, Any]:
        """Plain state for checkpoints (chunk lists, written once each)."""
        return {
            "preds": list(self.preds),
            "target": list(self.target),
            "weights": list(self.weights),
            "keys": {k: list(v) for k, v in self.keys.items()},
            "sample_ids": list(self.sample_ids),
            "samples": self.samples,
        }

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> SampleColumns:
        """Rebuild what :meth:`state` saved."""
        new = cls()
        new.preds = list(state["preds"])
        new.target = list(state["target"])
        new.weights = list(state["weights"])
        new.keys = {k: list(v) for k, v in state["keys"].items()}
        new.sample_ids = list(state["sample_ids"])
        new.samples = int(state["samples"])
        new._count_key_rows()
        return new


def _cat(chunks: list[torch.Tensor], dtype: type) -> np.ndarray:
    parts = [c.numpy() for c in chunks if c.numel()]
    if not parts:
        return np.zeros(0, dtype)
    return parts[0] if len(parts) == 1 else np.concatenate(parts)
