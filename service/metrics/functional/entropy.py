"""Normalized entropy: the model's mean log loss over that of the base-rate predictor."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from rankboard.service.metrics.functional._validation import validate_batch

__all__ = ["ne_from_sums", "ne_sums", "normalized_entropy"]


def ne_sums(
    preds: Tensor, target: Tensor, weights: Tensor | None, eta: float
) -> tuple[Tensor, Tensor, Tensor]:
    """``(sum w * logloss, sum w * y, sum w)`` in float64; preds clamped to [eta, 1 - eta]."""
    p = preds.to(torch.float64).clamp(eta, 1.0 - eta)
    y = target.to(torch.float64)
    # labels are 0/1, so the loss is -log(1 - |p - y|): one log per sample (torch's
    # float64 log is 2.5x faster than log1p); 1 - |p - y| is p or 1 - p, exact in float64
    # for float32 p except 1 - p below 2**-29, where the error is under 1e-16 absolute
    ce = (p - y).abs_().neg_().add_(1.0).log_().neg_()
    if weights is None:
        n = torch.tensor(float(p.numel()), dtype=torch.float64, device=p.device)
        return ce.sum(), y.sum(), n
    w = weights.to(torch.float64)
    return (ce * w).sum(), (y * w).sum(), w.sum()


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
