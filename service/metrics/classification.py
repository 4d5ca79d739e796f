"""Accuracy and recall@k."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from rankboard.service.metrics.base import RankMetric
from rankboard.service.metrics.functional._sums import binary_correct_sums
from rankboard.service.metrics.functional._validation import Batch, validate_batch
from rankboard.service.metrics.functional.classification import (
    accuracy_counts,
    correct_mask,
    recall_counts,
)

__all__ = ["Accuracy", "RecallAtK"]


class Accuracy(RankMetric):
    """Fraction of correct predictions.

    Binary with ``(n,)`` probabilities: predicted positive when ``p > threshold`` (tzrec;
    ``inclusive=True``: ``p >= threshold``, torchrec), targets in {0, 1} (``label_kind``
    is ``"binary"``). Multiclass with ``(n, C)`` scores: correct when the integer target
    class is among the ``top_k`` highest scores. NaN if no samples.

    Per-sample ``weights`` (torchrec's weighted accuracy): ``sum w [correct] / sum w``;
    an unweighted batch counts each sample with weight 1 (int64 counts, as before).

    >>> m = Accuracy()
    >>> m.update(torch.tensor([0.2, 0.7, 0.6]), torch.tensor([0, 1, 0]))
    >>> round(m.compute().item(), 4)
    0.6667
    >>> top2 = Accuracy(top_k=2)
    >>> top2.update(torch.tensor([[0.5, 0.3, 0.2], [0.1, 0.2, 0.7]]), torch.tensor([1, 0]))
    >>> top2.compute()  # a 0-d float64 tensor, as every metric's compute()
    tensor(0.5000, dtype=torch.float64)
    """

    label_kind = "binary"
    supports_weights = True

    # states (registered by add_state in __init__)
    correct: Tensor
    total: Tensor
    weighted_correct: Tensor
    weighted_total: Tensor

    def __init__(
        self, threshold: float = 0.5, top_k: int = 1, inclusive: bool = False, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        if top_k < 1:
            raise ValueError(f"Accuracy: top_k must be >= 1, got {top_k}")
        self.threshold = float(threshold)
        self.top_k = int(top_k)
        self.inclusive = bool(inclusive)
        self.add_state("correct", torch.tensor(0), dist_reduce_fx="sum", persistent=True)
        self.add_state("total", torch.tensor(0), dist_reduce_fx="sum", persistent=True)
        # weighted batches (absent from states saved before weights: loads as 0)
        zero = torch.tensor(0.0, dtype=torch.float64)
        self.add_state("weighted_correct", zero.clone(), dist_reduce_fx="sum", persistent=True)
        self.add_state("weighted_total", zero.clone(), dist_reduce_fx="sum", persistent=True)

    def _validate(self, preds: Any, target: Any, weights: Any, grouping_key: Any) -> Batch:
        multiclass = getattr(preds, "ndim", None) == 2 or (
            isinstance(preds, list | tuple) and bool(preds) and isinstance(preds[0], list | tuple)
        )
        return validate_batch(
            preds,
            target,
            label_kind="multiclass" if multiclass else "binary",
            weights=weights,
            grouping_key=grouping_key,
            multiclass_preds=multiclass,
            metric_name="Accuracy",
        )

    def _update_batch(self, b: Batch) -> None:
        """Add a batch: ``(n,)`` probabilities and 0/1 targets, or ``(n, C)`` and class ids."""
        if b.preds.dim() == 1:  # binary: one fused pass
            c, n = binary_correct_sums(b.preds, b.target, b.weights, self.threshold, self.inclusive)
            if b.weights is None:
                self.correct += c
                self.total += n
            else:
                self.weighted_correct += c
                self.weighted_total += n
            return
        if b.weights is not None:
            w = b.weights.to(torch.float64)
            ok = correct_mask(b.preds, b.target, self.threshold, self.top_k, self.inclusive)
            self.weighted_correct += (w * ok).sum()
            self.weighted_total += w.sum()
            return
        c, n = accuracy_counts(b.preds, b.target, self.threshold, self.top_k, self.inclusive)
        self.correct += c
        self.total += n

    def compute(self) -> Tensor:
        """The (weighted) accuracy, 0-d float64 (NaN without samples or weight)."""
        t = self.total.double() + self.weighted_total
        c = self.correct.double() + self.weighted_correct
        return torch.where(t > 0, c / torch.where(t > 0, t, 1.0), math.nan)


class RecallAtK(RankMetric):
    """Micro recall@k: relevant items ranked in the top ``top_k`` over all relevant items.

    ``preds`` are ``(n, C)`` scores. ``target`` is either ``(n, C)`` relevance (multi-hot
    0/1, or non-negative gains summed as weights) or ``(n,)`` integer class ids (one
    relevant item per row). ``top_k`` larger than C means all C. NaN when nothing is
    relevant. Per-sample ``weights`` scale each row's relevance (torchrec's weighted
    recall: ``sum w hit / sum w`` with one relevant class per row).

    >>> m = RecallAtK(top_k=1)
    >>> preds = torch.tensor([[0.9, 0.8, 0.1], [0.1, 0.2, 0.7]])
    >>> m.update(preds, torch.tensor([[1, 0, 1], [0, 0, 1]]))
    >>> round(m.compute().item(), 4)
    0.6667
    """

    label_kind = "multiclass"
    multiclass_preds = True
    allow_multihot_target = True
    supports_weights = True

    # states (registered by add_state in __init__)
    hits: Tensor
    relevant: Tensor

    def __init__(self, top_k: int = 5, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if top_k < 1:
            raise ValueError(f"RecallAtK: top_k must be >= 1, got {top_k}")
        self.top_k = int(top_k)
        zero = torch.tensor(0.0, dtype=torch.float64)
        self.add_state("hits", zero.clone(), dist_reduce_fx="sum", persistent=True)
        self.add_state("relevant", zero.clone(), dist_reduce_fx="sum", persistent=True)

    def _update_batch(self, b: Batch) -> None:
        """Add a batch: ``preds`` (n, C), ``target`` (n, C) relevance or (n,) class ids."""
        h, r = recall_counts(b.preds, b.target, self.top_k, b.weights)
        self.hits += h
        self.relevant += r

    def compute(self) -> Tensor:
        """The recall, 0-d float64 (NaN when nothing was relevant)."""
        r = self.relevant
        return torch.where(r > 0, self.hits / torch.where(r > 0, r, 1.0), math.nan)
