"""Accuracy (binary threshold or multiclass top-k) and recall@k."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from rankboard.service.metrics.functional._validation import validate_batch

__all__ = ["accuracy", "accuracy_counts", "recall_at_k", "recall_counts"]


def accuracy_counts(
    preds: Tensor, target: Tensor, threshold: float, top_k: int
) -> tuple[Tensor, Tensor]:
    """``(correct, total)`` as int64 (unchecked inputs).

    1-D preds: binary, predicted positive when ``preds > threshold``. 2-D preds ``(n, C)``:
    correct when the target class is among the ``top_k`` highest scores.
    """
    n = preds.shape[0]
    if preds.dim() == 1:
        correct = ((preds > threshold).to(torch.int64) == target.to(torch.int64)).sum()
    else:
        k = min(int(top_k), preds.shape[1])
        top = torch.topk(preds, k, dim=1).indices
        correct = (top == target.to(torch.int64).unsqueeze(1)).any(1).sum()
    return correct.to(torch.int64), torch.tensor(n, dtype=torch.int64, device=preds.device)


def accuracy(preds: Tensor, target: Tensor, *, threshold: float = 0.5, top_k: int = 1) -> Tensor:
    """Fraction correct; binary for ``(n,)`` preds, top-k for ``(n, C)``. NaN if empty.

    >>> accuracy(torch.tensor([0.2, 0.7, 0.6]), torch.tensor([0, 1, 0])).item()
    0.6666666666666666
    """
    multiclass = isinstance(preds, Tensor) and preds.dim() == 2
    b = validate_batch(
        preds,
        target,
        label_kind="multiclass" if multiclass else "binary",
        multiclass_preds=multiclass,
        metric_name="accuracy",
    )
    c, n = accuracy_counts(b.preds, b.target, threshold, top_k)
    return c.to(torch.float64) / n if int(n) else torch.tensor(math.nan, dtype=torch.float64)


def recall_counts(preds: Tensor, target: Tensor, top_k: int) -> tuple[Tensor, Tensor]:
    """``(relevance found in the top k, total relevance)`` in float64 (unchecked inputs).

    ``target`` is ``(n, C)`` relevance (multi-hot) or ``(n,)`` class ids (one-hot).
    """
    k = min(int(top_k), preds.shape[1])
    top = torch.topk(preds, k, dim=1).indices
    if target.dim() == 1:
        hits = (top == target.unsqueeze(1)).any(1).sum().to(torch.float64)
        total = torch.tensor(float(target.shape[0]), dtype=torch.float64, device=preds.device)
        return hits, total
    rel = target.to(torch.float64)
    return torch.gather(rel, 1, top).sum(), rel.sum()


def recall_at_k(preds: Tensor, target: Tensor, *, top_k: int = 5) -> Tensor:
    """Micro recall@k: relevant items ranked in the top k over all relevant items.

    NaN when nothing is relevant.

    >>> p = torch.tensor([[0.9, 0.8, 0.1], [0.1, 0.2, 0.7]])
    >>> recall_at_k(p, torch.tensor([[1, 0, 1], [0, 0, 1]]), top_k=1).item()
    0.6666666666666666
    >>> recall_at_k(p, torch.tensor([1, 2]), top_k=1).item()
    0.5
    """
    b = validate_batch(
        preds,
        target,
        label_kind="multiclass",
        multiclass_preds=True,
        allow_multihot_target=True,
        metric_name="recall_at_k",
    )
    hits, total = recall_counts(b.preds, b.target, top_k)
    return torch.where(total > 0, hits / torch.where(total > 0, total, 1.0), math.nan)
