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
    """NE from the sums of :func:`ne_sums`; NaN when there is no (weight of) sample.

    As torchrec's ``compute_ne`` and tzrec's ``NormalizedEntropy``: the baseline is the
    log loss of the positive rate clamped to ``[eta, 1 - eta]``, summed over the
    positives and negatives actually seen (``-(pos log r + neg log(1 - r))``). With one
    class only the baseline is tiny, not zero, so the value is finite and very large
    (about ``logloss / eta``), the same number torchrec and tzrec report.

    >>> one_class = ne_from_sums(*ne_sums(torch.tensor([0.9, 0.8]), torch.ones(2), None, 1e-12),
    ...                          eta=1e-12)
    >>> round(one_class.item() / 1e11, 4)  # mean log loss 0.164 over -log(1 - 1e-12)
    1.6426
    """
    ok = total > 0
    t = torch.where(ok, total, 1.0)
    rate = (pos / t).clamp(eta, 1.0 - eta)
    neg = (t - pos).clamp(min=0.0)
    base = -(pos * torch.log(rate) + neg * torch.log(1.0 - rate))
    return torch.where(ok, ce / base, math.nan)


def normalized_entropy(
    preds: Tensor,
    target: Tensor,
    *,
    weights: Tensor | None = None,
    eta: float = 1e-12,
) -> Tensor:
    """Normalized entropy of probabilities ``preds`` against 0/1 labels.

    With only one class present the base rate is clamped to ``[eta, 1 - eta]`` and the
    value is finite and very large, as in torchrec and tzrec; NaN only without samples.

    >>> round(normalized_entropy(torch.tensor([0.2, 0.6, 0.9]), torch.tensor([0, 1, 1])).item(), 4)
    0.4395
    """
    b = validate_batch(
        preds,
        target,
        label_kind="binary",
        weights=weights,
        prob_preds=True,
        metric_name="normalized_entropy",
    )
    return ne_from_sums(*ne_sums(b.preds, b.target, b.weights, eta), eta=eta)
