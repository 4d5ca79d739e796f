"""Joint ranking and calibration loss (JRC, arXiv 2208.06164).

Example::

    >>> import torch
    >>> logits = torch.tensor([[0.0, 1.0], [1.0, 0.0], [0.0, 0.0]])
    >>> loss = JRCLoss(alpha=0.5)
    >>> round(loss(logits, torch.tensor([1, 0, 1]), torch.tensor([7, 7, 8])).item(), 4)
    0.3244
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["JRC_REDUCTIONS", "JRCLoss", "jrc_loss"]

JRC_REDUCTIONS = ("none", "mean")
"""tzrec's JRC reductions (its ``"sum"`` mixes a summed CE with a mean session term)."""


def _check_inputs(logits: torch.Tensor, labels: torch.Tensor, session_ids: torch.Tensor) -> None:
    if logits.dim() != 2 or logits.shape[1] != 2:
        raise ValueError(f"JRCLoss: logits must be (n, 2), got {tuple(logits.shape)}")
    n = logits.shape[0]
    if n == 0:
        raise ValueError("JRCLoss: empty batch")
    if labels.shape != (n,):
        raise ValueError(f"JRCLoss: labels must be ({n},), got {tuple(labels.shape)}")
    if session_ids.shape != (n,):
        raise ValueError(f"JRCLoss: session ids must be ({n},), got {tuple(session_ids.shape)}")
    if session_ids.is_floating_point() or session_ids.is_complex():
        raise ValueError(f"JRCLoss: session ids must be integers, got {session_ids.dtype}")
    if not bool(((labels == 0) | (labels == 1)).all()):
        raise ValueError("JRCLoss: labels must be 0 or 1")


def jrc_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    session_ids: torch.Tensor,
    alpha: float = 0.5,
    reduction: str = "mean",
) -> torch.Tensor:
    """``alpha * CE(logits, labels) + (1 - alpha) * generalisation term``.

    In the generalisation term each positive competes, by its positive-class
    logit ``logits[:, 1]``, in a softmax against the negatives of its session;
    each negative, by its negative-class logit ``logits[:, 0]``, against the
    positives of its session. With ``reduction="mean"`` the per-sample terms
    are summed and divided by n; ``"none"`` returns the n per-sample losses
    ``alpha * ce_i + (1 - alpha) * g_i`` (their mean is the ``"mean"`` loss, as
    in tzrec). Uses an n x n session mask.

    Unlike tzrec, a batch without positives (or without negatives) gives a
    finite loss: tzrec averages an empty set of session terms there and its
    ``"mean"`` loss is NaN.

    With all logits equal, CE is log 2; in one session of one positive and two
    negatives the positive's term is log 3 and each negative's log 2:

    >>> import math, torch
    >>> loss = jrc_loss(torch.zeros(3, 2), torch.tensor([1, 0, 0]), torch.tensor([7, 7, 7]))
    >>> math.isclose(loss.item(), (math.log(2) + (math.log(3) + 2 * math.log(2)) / 3) / 2,
    ...              rel_tol=1e-6)
    True
    """
    if reduction not in JRC_REDUCTIONS:
        raise ValueError(
            f"JRCLoss.reduction must be one of {', '.join(JRC_REDUCTIONS)}, got {reduction!r}"
        )
    _check_inputs(logits, labels, session_ids)
    labels = labels.long()
    ce = F.cross_entropy(logits, labels, reduction="none")

    is_pos = labels == 1
    same_session = session_ids[:, None] == session_ids[None, :]
    competitors = same_session & (is_pos[:, None] != is_pos[None, :])
    competitors |= torch.eye(len(labels), dtype=torch.bool, device=logits.device)
    # row i scores every sample by the logit of i's own class
    scores = torch.where(is_pos[:, None], logits[:, 1][None, :], logits[:, 0][None, :])
    scores = scores.masked_fill(~competitors, float("-inf"))
    own = torch.diagonal(scores)
    per_sample = alpha * ce + (1 - alpha) * (torch.logsumexp(scores, dim=1) - own)
    return per_sample if reduction == "none" else per_sample.mean()


class JRCLoss(nn.Module):
    """:func:`jrc_loss` as a module; ``session_name`` names the session feature.

    Args:
        alpha: weight of the calibration (cross-entropy) term, in [0, 1].
        session_name: the feature holding session ids (kept for the caller).
        reduction: ``"mean"`` or ``"none"`` (per-sample losses).
    """

    def __init__(self, alpha: float = 0.5, session_name: str = "", reduction: str = "mean") -> None:
        super().__init__()
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"JRCLoss.alpha must be in [0, 1], got {alpha}")
        if reduction not in JRC_REDUCTIONS:
            raise ValueError(
                f"JRCLoss.reduction must be one of {', '.join(JRC_REDUCTIONS)}, got {reduction!r}"
            )
        self.alpha = alpha
        self.session_name = session_name
        self.reduction = reduction

    def forward(
        self, logits: torch.Tensor, labels: torch.Tensor, session_ids: torch.Tensor
    ) -> torch.Tensor:
        """Loss of ``(n, 2)`` logits, ``(n,)`` 0/1 labels and ``(n,)`` integer session ids."""
        return jrc_loss(logits, labels, session_ids, self.alpha, self.reduction)
