"""Binary AUC and one-vs-rest multiclass AUC, binned or exact."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from rankboard.service.metrics.base import RankMetric
from rankboard.service.metrics.functional._validation import Batch
from rankboard.service.metrics.functional.auc import (
    add_binned_counts,
    auc_from_histogram,
    exact_auc,
    exact_multiclass_auc,
    multiclass_auc_from_histogram,
    multiclass_histogram,
)

__all__ = ["AUC", "MulticlassAUC"]


class AUC(RankMetric):
    """Binary AUC, optionally weighted.

    ``thresholds > 0`` (default 200): a histogram of positives and negatives over
    ``thresholds`` equal-width bins on [0, 1], filled by one bucketize-and-count pass
    (``bincount`` of ``clamp(floor(p * bins), 0, bins - 1)``); pairs in one bin count one
    half. Predictions must be probabilities in [0, 1]. State: ``2 * thresholds`` float64.

    ``thresholds == 0``: exact, ties count one half (sklearn's ``roc_auc_score``); keeps
    every sample (float32 preds, targets and weights) and sorts at compute.

    ``compute()`` is NaN until both classes have been seen.

    >>> m = AUC(thresholds=0)
    >>> m.update(torch.tensor([0.1, 0.4]), torch.tensor([0, 1]))
    >>> m.update(torch.tensor([0.4, 0.8]), torch.tensor([0, 1]))
    >>> m.compute().item()
    0.875
    >>> binned = AUC(thresholds=10)
    >>> binned.update(torch.tensor([0.1, 0.45, 0.4, 0.8]), torch.tensor([0, 0, 1, 1]))
    >>> binned.compute().item()
    0.875
    """

    supports_weights = True
    label_kind = "binary"

    def __init__(self, thresholds: int = 200, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if thresholds < 0:
            raise ValueError(f"AUC: thresholds must be >= 0, got {thresholds}")
        self.thresholds = int(thresholds)
        self.prob_preds = self.thresholds > 0
        if self.thresholds:
            zeros = torch.zeros(2 * self.thresholds, dtype=torch.float64)
            self.add_state("hist", zeros, dist_reduce_fx="sum", persistent=True)
        else:
            self.add_state("preds", [], dist_reduce_fx="cat", persistent=True)
            self.add_state("target", [], dist_reduce_fx="cat", persistent=True)
            self.add_state("weights", [], dist_reduce_fx="cat", persistent=True)

    def update(
        self,
        preds: Any,
        target: Any,
        *,
        weights: Any | None = None,
        grouping_key: Any | None = None,
    ) -> None:
        """Add a batch: ``preds`` (n,) scores, ``target`` (n,) in {0, 1}, ``weights`` (n,)."""
        b = self._prepare(preds, target, weights, grouping_key)
        if b is None:
            return
        if self.thresholds:
            self._add_histogram(b)
        else:
            self.preds.append(b.preds)
            self.target.append(b.target)
            # an empty chunk stands for unit weights: unweighted streams keep no weights
            self.weights.append(b.weights if b.weights is not None else b.preds.new_empty(0))

    def _add_histogram(self, b: Batch) -> None:
        add_binned_counts(self.hist, b.preds, b.target, self.thresholds, b.weights)

    def compute(self) -> Tensor:
        """The AUC as a 0-d float64 tensor (NaN without positives or negatives)."""
        if self.thresholds:
            return auc_from_histogram(self.hist)
        empty = torch.zeros(0, device=self.device)
        preds = self._cat(self.preds, empty)
        return exact_auc(preds, self._cat(self.target, empty), self._weights(preds))

    def _weights(self, preds: Tensor) -> Tensor | None:
        """The weights of all samples, None when every chunk is unweighted."""
        chunks = [self.weights] if isinstance(self.weights, Tensor) else self.weights
        given = sum(int(w.numel()) for w in chunks)
        if given == 0:
            return None
        if given == preds.numel():
            return torch.cat(chunks) if len(chunks) > 1 else chunks[0]
        pred_chunks = [self.preds] if isinstance(self.preds, Tensor) else self.preds
        sizes = [int(p.numel()) for p in pred_chunks]
        return torch.cat(
            [
                w if w.numel() else torch.ones(n, dtype=torch.float32, device=preds.device)
                for w, n in zip(chunks, sizes, strict=True)
            ]
        )


class MulticlassAUC(RankMetric):
    """One-vs-rest AUC of ``(n, C)`` class probabilities against integer class ids.

    ``average``: ``"macro"`` (mean over classes whose AUC is defined) or ``"weighted"``
    (weighted by class support). ``thresholds > 0`` bins like :class:`AUC` (state
    ``C x 2 x thresholds`` counts, sized at the first update); 0 is exact and keeps the
    samples. The number of classes is fixed by the first batch; a batch with another
    number of columns is refused.

    >>> m = MulticlassAUC(thresholds=0)
    >>> p = torch.tensor([[0.7, 0.2, 0.1], [0.2, 0.5, 0.3], [0.1, 0.3, 0.6], [0.4, 0.4, 0.2]])
    >>> m.update(p, torch.tensor([0, 1, 2, 1]))
    >>> m.compute().item()
    1.0
    """

    label_kind = "multiclass"
    multiclass_preds = True

    def __init__(self, thresholds: int = 200, average: str = "macro", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if average not in ("macro", "weighted"):
            raise ValueError(
                f"MulticlassAUC: average must be 'macro' or 'weighted', got {average!r}"
            )
        if thresholds < 0:
            raise ValueError(f"MulticlassAUC: thresholds must be >= 0, got {thresholds}")
        self.thresholds = int(thresholds)
        self.average = average
        self.prob_preds = self.thresholds > 0
        self.add_state("num_classes", torch.tensor(0), dist_reduce_fx="max", persistent=True)
        if self.thresholds:
            empty = torch.zeros(0, dtype=torch.float64)
            self.add_state("hist", empty, dist_reduce_fx="sum", persistent=True)
        else:
            self.add_state("preds", [], dist_reduce_fx="cat", persistent=True)
            self.add_state("target", [], dist_reduce_fx="cat", persistent=True)

    def _validate(self, preds: Any, target: Any, weights: Any, grouping_key: Any) -> Batch:
        b = super()._validate(preds, target, weights, grouping_key)
        c = int(self.num_classes)
        if c and b.size and b.preds.shape[1] != c:
            raise ValueError(
                f"MulticlassAUC: preds have {b.preds.shape[1]} classes, earlier batches had {c}"
            )
        return b

    def update(
        self,
        preds: Any,
        target: Any,
        *,
        weights: Any | None = None,
        grouping_key: Any | None = None,
    ) -> None:
        """Add a batch: ``preds`` (n, C) probabilities, ``target`` (n,) ids in [0, C)."""
        b = self._prepare(preds, target, weights, grouping_key)
        if b is None:
            return
        c = b.preds.shape[1]
        self.num_classes.fill_(c)  # in place: no host-to-device copy (a sync on CUDA)
        if self.thresholds:
            h = multiclass_histogram(b.preds, b.target, self.thresholds).reshape(-1)
            self.hist = h if self.hist.numel() == 0 else self.hist + h
        else:
            self.preds.append(b.preds)
            self.target.append(b.target)

    def _reduce_states(self, incoming_state: dict[str, Any]) -> None:
        if self.thresholds:
            inc = incoming_state["hist"]
            if inc.numel() == 0:
                incoming_state = {**incoming_state, "hist": torch.zeros_like(self.hist)}
            elif self.hist.numel() == 0:
                self.hist = torch.zeros_like(inc)
        super()._reduce_states(incoming_state)

    def compute(self) -> Tensor:
        """The averaged one-vs-rest AUC, 0-d float64 (NaN when no class is defined)."""
        c = int(self.num_classes)
        if c == 0:
            return torch.tensor(float("nan"), dtype=torch.float64, device=self.device)
        if self.thresholds:
            return multiclass_auc_from_histogram(self.hist.reshape(c, -1), self.average)
        preds = self._cat(self.preds, torch.zeros(0, c, device=self.device))
        target = self._cat(self.target, torch.zeros(0, dtype=torch.int64, device=self.device))
        return exact_multiclass_auc(preds, target, self.average)
