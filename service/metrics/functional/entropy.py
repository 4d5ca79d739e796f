"""Normalized entropy: the model's mean log loss over that of the base-rate predictor."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from rankboard.service.metrics.functional._sums import logloss_sums
from rankboard.service.metrics.functional._validation import validate_batch

__all__ = ["ne_from_sums", "ne_sums", "normalized_entropy"]


def ne_sums(
    preds: Tensor, target: Tensor, weights: Tensor | None, eta: float
) -> tuple[Tensor, Tensor, Tensor]:
    """``(sum w * logloss, sum w * y, sum w)`` as 0-d float64 tensors; preds clamped to
    [eta, 1 - eta] (unchecked inputs; :func:`._sums.logloss_sums` gives plain numbers)."""
    return tuple(  # type: ignore[return-value]
        torch.as_tensor(x, dtype=torch.float64, device=preds.device)
        for x in logloss_sums(preds, target, weights, eta)
    )


def ne_from_sums(ce: Tensor, pos: Tensor, total: Tensor, eta: float) -> Tensor:
    """NE from the sums of :func:`ne_sums`; NaN when there is no (weight of) sample."""
    ok = total > 0
    t = torch.where(ok, total, 1.0)
    rate = (pos / t).clamp(eta, 1.0 - eta)
    base = -(rate * torch.log(rate) + (1.0 - rate) * torch.log1p(-rate))
    return torch.where(ok, (ce / t) / base, math.nan)


def normalized_entropy(
    preds: Tensor,
    target: Tensor,
    *,
    weights: Tensor | None = None,
    eta: float = 1e-12,
) -> Tensor:
    """Normalized entropy of probabilities ``preds`` against 0/1 labels.

    With only one class present the base rate is clamped to ``[eta, 1 - eta]`` and the
    value is finite (large); it is NaN only without samples.

    >>> round(normalized_entropy(torch.tensor([0.2, 0.6, 0.9]), torch.tensor([0, 1, 1])).item(), 4)
    0.4395
    """
    b = validate_batch(
        preds,
        target,
        label_kind="binary",
        weights=weights,
        supports_weights=True,
        prob_preds=True,
        metric_name="normalized_entropy",
    )
    return ne_from_sums(*ne_sums(b.preds, b.target, b.weights, eta), eta=eta)
