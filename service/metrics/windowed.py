"""A sliding window over the last ``window_size`` samples of any metric (torchrec's
``window_size`` of ``RecMetric``): :class:`Windowed`, what ``MetricConfig.window_size``
builds."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from rankboard.service.metrics._weights import aligned_weights
from rankboard.service.metrics.base import RankMetric
from rankboard.service.metrics.functional._validation import Batch

__all__ = ["Windowed"]


class Windowed(RankMetric):
    """Any metric over the last ``window_size`` samples (torchrec's ``window_size``).

    Keeps the last ``window_size`` samples (float32 preds and targets, weights and group
    keys when given) as chunks, dropping the oldest as new ones arrive (the oldest kept
    chunk is cut to the sample), and computes the inner metric on them at compute: memory
    and compute are bounded by the window, whatever the metric. ``make`` builds a fresh
    inner metric (also used for the validation and class attributes). The inner metric
    sees the window as one batch: per-batch metrics (session recall's sessions, unique
    ratio, in-batch XAUC) take the kept samples together.

    >>> from rankboard.service.metrics import AUC
    >>> m = Windowed(lambda: AUC(thresholds=0), window_size=4)
    >>> m.update(torch.tensor([0.9, 0.1]), torch.tensor([0, 1]))  # dropped below
    >>> m.update(torch.tensor([0.2, 0.8, 0.3, 0.7]), torch.tensor([0, 1, 0, 1]))
    >>> m.compute().item()
    1.0
    """

    _undo_keeps_lists = True  # old chunks are dropped or cut (the window bounds the list)

    # states (registered by add_state in __init__)
    preds: list[Tensor]
    target: list[Tensor]
    weights: list[Tensor]
    keys: list[Tensor]

    def __init__(self, make: Callable[[], RankMetric], window_size: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if window_size < 1:
            raise ValueError(f"window_size must be >= 1, got {window_size}")
        self.make = make
        self.window_size = int(window_size)
        proto = make()
        self.inner_name = type(proto).__name__
        self.supports_weights = proto.supports_weights
        self.needs_grouping_key = proto.needs_grouping_key
        self.label_kind = proto.label_kind
        self.prob_preds = proto.prob_preds
        if hasattr(proto, "grouping_key_name"):
            self.grouping_key_name: str = str(proto.grouping_key_name)
        # not a registered submodule: its (empty) states stay out of state_dict
        self.__dict__["_proto"] = proto
        for name in ("preds", "target", "weights", "keys"):
            self.add_state(name, [], dist_reduce_fx="cat", persistent=True)

    def _validate(self, preds: Any, target: Any, weights: Any, grouping_key: Any) -> Batch:
        proto: RankMetric = self.__dict__["_proto"]
        return proto._validate(preds, target, weights, grouping_key)  # the inner's

    def _update_batch(self, b: Batch) -> None:
        """Add a batch (the inner metric's inputs) and drop what falls out of the window."""
        self.preds.append(b.preds)
        self.target.append(b.target)
        empty = b.preds.new_empty(0)
        self.weights.append(b.weights if b.weights is not None else empty)
        self.keys.append(b.keys if b.keys is not None else empty.to(torch.int64))
        self._trim()

    def _trim(self) -> None:
        sizes = [int(p.shape[0]) for p in self.preds]
        extra = sum(sizes) - self.window_size
        while extra > 0:
            first = sizes[0]
            if first <= extra:
                for name in ("preds", "target", "weights", "keys"):
                    getattr(self, name).pop(0)
                sizes.pop(0)
                extra -= first
            else:
                for name in ("preds", "target", "weights", "keys"):
                    chunk = getattr(self, name)[0]
                    if chunk.numel():
                        getattr(self, name)[0] = chunk[extra:]
                extra = 0

    def compute(self) -> Tensor:
        """The inner metric's value over the window (NaN as the inner metric when empty)."""
        inner = self.make()
        if not self.preds:
            return inner.compute()
        preds = torch.cat(list(self.preds)) if len(self.preds) > 1 else self.preds[0]
        target = torch.cat(list(self.target)) if len(self.target) > 1 else self.target[0]
        w = aligned_weights(self.preds, self.weights)
        keys = None
        if self.needs_grouping_key:
            keys = torch.cat(list(self.keys))
        inner.update(preds, target, weights=w, grouping_key=keys)
        value = inner.compute()
        if hasattr(inner, "num_groups"):
            self.num_groups = inner.num_groups
        return value
