"""Accuracy (binary threshold or multiclass top-k) and recall@k."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from rankboard.service.metrics.functional._validation import validate_batch

__all__ = [
    "accuracy",
    "accuracy_counts",
    "correct_mask",
    "recall_at_k",
    "recall_counts",
]


def correct_mask(
    preds: Tensor, target: Tensor, threshold: float, top_k: int, inclusive: bool = False
) -> Tensor:
    """Per sample, whether the prediction is correct (bool ``(n,)``, unchecked inputs).

    1-D preds: binary, predicted positive when ``preds > threshold`` (tzrec, torchmetrics)
    or ``>=`` with ``inclusive`` (torchrec). 2-D preds ``(n, C)``: correct when the target
    class is among the ``top_k`` highest scores.
    """
    if preds.dim() == 1:
        pos = preds >= threshold if inclusive else preds > threshold
        return pos == target.to(torch.bool)
    k = min(int(top_k), preds.shape[1])
    top = torch.topk(preds, k, dim=1).indices
    return (top == target.to(torch.int64).unsqueeze(1)).any(1)


def accuracy_counts(
    preds: Tensor, target: Tensor, threshold: float, top_k: int, inclusive: bool = False
) -> tuple[Tensor, Tensor]:
    """``(correct, total)`` as int64 (unchecked inputs); see :func:`correct_mask`."""
    n = preds.shape[0]
    correct = correct_mask(preds, target, threshold, top_k, inclusive).sum()
    return correct.to(torch.int64), torch.tensor(n, dtype=torch.int64, device=preds.device)


def accuracy(
    preds: Tensor,
    target: Tensor,
    *,
    threshold: float = 0.5,
    top_k: int = 1,
    inclusive: bool = False,
    weights: Tensor | None = None,
) -> Tensor:
    """Fraction correct; binary for ``(n,)`` preds, top-k for ``(n, C)``. NaN if empty.

    ``weights``: ``sum w [correct] / sum w`` (torchrec's weighted accuracy); NaN when the
    weights sum to 0 (torchrec: 0).

    >>> accuracy(torch.tensor([0.2, 0.7, 0.6]), torch.tensor([0, 1, 0])).item()
    0.6666666666666666
    >>> accuracy(torch.tensor([0.2, 0.7, 0.6]), torch.tensor([0, 1, 0]),
    ...          weights=torch.tensor([1.0, 1.0, 2.0])).item()
    0.5
    """
    multiclass = isinstance(preds, Tensor) and preds.dim() == 2
    b = validate_batch(
        preds,
        target,
        label_kind="multiclass" if multiclass else "binary",
        multiclass_preds=multiclass,
        weights=weights,
        metric_name="accuracy",
    )
    ok = correct_mask(b.preds, b.target, threshold, top_k, inclusive)
    if b.weights is not None:
        w = b.weights.to(torch.float64)
        total = w.sum()
        return torch.where(total > 0, (w * ok).sum() / torch.where(total > 0, total, 1), math.nan)
    n = ok.numel()
    return ok.sum().to(torch.float64) / n if n else torch.tensor(math.nan, dtype=torch.float64)


def recall_counts(
    preds: Tensor, target: Tensor, top_k: int, weights: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """``(relevance found in the top k, total relevance)`` in float64 (unchecked inputs).

    ``target`` is ``(n, C)`` relevance (multi-hot) or ``(n,)`` class ids (one-hot);
    ``weights`` scale each row's relevance (torchrec's weighted recall).
    """
    k = min(int(top_k), preds.shape[1])
    top = torch.topk(preds, k, dim=1).indices
    if target.dim() == 1:
        hit = (top == target.unsqueeze(1)).any(1)
        if weights is not None:
            w = weights.to(torch.float64)
            return (w * hit).sum(), w.sum()
        hits = hit.sum().to(torch.float64)
        total = torch.tensor(float(target.shape[0]), dtype=torch.float64, device=preds.device)
        return hits, total
    rel = target.to(torch.float64)
    if weights is not None:
        rel = rel * weights.to(torch.float64).unsqueeze(1)
    return torch.gather(rel, 1, top).sum(), rel.sum()


def recall_at_k(
    preds: Tensor, target: Tensor, *, top_k: int = 5, weights: Tensor | None = None
) -> Tensor:
    """Micro recall@k: relevant items ranked in the top k over all relevant items.

    NaN when nothing is relevant. ``weights`` scale each row's relevance.

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
        weights=weights,
        metric_name="recall_at_k",
    )
    hits, total = recall_counts(b.preds, b.target, top_k, b.weights)
    return torch.where(total > 0, hits / torch.where(total > 0, total, 1.0), math.nan)
