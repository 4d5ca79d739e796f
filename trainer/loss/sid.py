"""Losses of semantic-ID (SID) generation models (RQ-VAE), as tzrec defines them.

tzrec's ``LossConfig.sid_loss`` oneof (``recon_loss``, ``commitment_loss``,
``contrastive_loss``; tzrec/loss/sid_*_loss.py at 54cac31): each module reduces
to a scalar.

* :class:`SidReconLoss`: a per-row distance between the decoder output and the
  input (``"l2"``: mean squared error over the row, ``"l1"``: mean absolute
  error, ``"cos"``: 1 - cosine similarity), averaged over the rows a mask keeps
  (0, not NaN, when it keeps none).
* :class:`SidCommitmentLoss`: ``w1 * d(e, sg(q)) + w2 * d(sg(e), q)`` between the
  encoder output ``e`` (B, D) and the per-layer cumulative quantized vectors ``q``
  (B, L, D), each distance averaged over rows, layers (and dims); ``sg`` stops
  the gradient, so ``w1`` pulls the encoder toward the codes and ``w2`` the
  codebook toward the encoder.
* :class:`SidContrastiveLoss`: masked InfoNCE over two views (``a``, ``b``):
  three symmetric groups (the two reconstructions against each other, each
  against the other view's original, each against its own original), each
  with a learnable temperature; only rows with ``pair_mask`` count, and their
  columns are the only candidates.

Example::

    >>> import torch
    >>> SidReconLoss("l1")(torch.ones(2, 3), torch.zeros(2, 3)).item()
    1.0
    >>> SidCommitmentLoss((1.0, 0.5))(torch.zeros(2, 4), torch.ones(2, 3, 4)).item()
    1.5
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

__all__ = [
    "SID_DISTANCES",
    "SidCommitmentLoss",
    "SidContrastiveLoss",
    "SidReconLoss",
]

SID_DISTANCES = ("l2", "l1", "cos")
"""Distances of the reconstruction and commitment losses."""

LOGIT_SCALE_INIT = math.log(1 / 0.07)
"""Initial log temperature of the contrastive groups (CLIP's)."""
LOGIT_SCALE_MAX = math.log(100)
"""The log temperature is clamped to this before ``exp`` (scale <= 100)."""


def _check_distance(value: str, what: str) -> None:
    if value not in SID_DISTANCES:
        raise ValueError(f"{what} must be one of {', '.join(SID_DISTANCES)}, got {value!r}")


class SidReconLoss(nn.Module):
    """Reconstruction loss: the per-row distance averaged over the (masked-in) rows.

    Args:
        recon_type: ``"l2"``, ``"l1"`` or ``"cos"``.

    >>> import torch
    >>> x_hat = torch.tensor([[1.0, 1.0], [2.0, 2.0], [3.0, 3.0], [4.0, 4.0]])
    >>> SidReconLoss("l1")(x_hat, torch.zeros(4, 2), torch.tensor([1, 0, 1, 0]).bool()).item()
    2.0
    """

    def __init__(self, recon_type: str = "l2") -> None:
        super().__init__()
        _check_distance(recon_type, "recon_type")
        self.recon_type = recon_type

    def per_row(self, x_hat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """The distance of each row, shape (B,)."""
        if x_hat.shape != x.shape:
            raise ValueError(
                f"SidReconLoss: x_hat and x must have the same shape, "
                f"got {tuple(x_hat.shape)} and {tuple(x.shape)}"
            )
        if self.recon_type == "cos":
            return 1 - F.cosine_similarity(x_hat, x, dim=-1)
        diff = x_hat - x
        return (diff.abs() if self.recon_type == "l1" else diff.square()).mean(dim=-1)

    @staticmethod
    def masked_mean(per_row: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Mean over the rows ``mask`` keeps (all if None); 0 when it keeps none.

        >>> import torch
        >>> SidReconLoss.masked_mean(torch.tensor([1.0, 2.0]), torch.zeros(2).bool()).item()
        0.0
        """
        if mask is None:
            return per_row.mean()
        keep = mask.to(per_row.dtype)
        count = keep.sum()
        total = (per_row * keep).sum()
        return torch.where(count > 0, total / count.clamp(min=1), torch.zeros_like(total))

    def forward(
        self, x_hat: torch.Tensor, x: torch.Tensor, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Scalar loss of the reconstruction ``x_hat`` (B, D) of ``x`` (B, D)."""
        return self.masked_mean(self.per_row(x_hat, x), mask)


class SidCommitmentLoss(nn.Module):
    """Commitment loss between the encoder output and the cumulative quantized vectors.

    Args:
        latent_weight: ``[w1, w2]``, exactly two values (tzrec's default 1.0, 0.5).
        commitment_type: ``"l2"``, ``"l1"`` or ``"cos"``.
    """

    def __init__(
        self, latent_weight: Sequence[float] = (1.0, 0.5), commitment_type: str = "l2"
    ) -> None:
        super().__init__()
        if len(latent_weight) != 2:
            raise ValueError(
                f"latent_weight must have exactly 2 values [w1, w2], got {list(latent_weight)}"
            )
        _check_distance(commitment_type, "commitment_type")
        self.w1, self.w2 = (float(w) for w in latent_weight)
        self.commitment_type = commitment_type

    def _distance(self, x: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
        if self.commitment_type == "cos":
            return (1 - F.cosine_similarity(x, q, dim=-1)).mean()
        diff = x - q
        return (diff.abs() if self.commitment_type == "l1" else diff.square()).mean()

    def forward(self, encoder_out: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        """Scalar loss of ``encoder_out`` (B, D) against ``latents`` (B, L, D)."""
        if latents.dim() != 3 or encoder_out.shape != (latents.shape[0], latents.shape[2]):
            raise ValueError(
                "SidCommitmentLoss: expected encoder_out (B, D) and latents (B, L, D), got "
                f"{tuple(encoder_out.shape)} and {tuple(latents.shape)}"
            )
        e = encoder_out[:, None, :]
        toward_quant = self._distance(e, latents.detach())
        toward_encoder = self._distance(e.detach(), latents)
        return self.w1 * toward_quant + self.w2 * toward_encoder


def _gather_rows(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """Concatenate every rank's rows (with gradient); identity in one process."""
    if not dist.is_available() or not dist.is_initialized() or dist.get_world_size() == 1:
        return tensors
    import torch.distributed.nn as dist_nn

    with warnings.catch_warnings():
        # torch 2.13 marks it deprecated in favour of a private API; it is the public,
        # differentiable all-gather (tzrec uses the same)
        warnings.simplefilter("ignore", FutureWarning)
        return [torch.cat(dist_nn.all_gather(t), dim=0) for t in tensors]


def _gather_mask(mask: torch.Tensor) -> torch.Tensor:
    if not dist.is_available() or not dist.is_initialized() or dist.get_world_size() == 1:
        return mask
    parts = [torch.zeros_like(mask) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, mask)
    return torch.cat(parts, dim=0)


class SidContrastiveLoss(nn.Module):
    """Masked pair-contrastive (InfoNCE) loss of a SID model over views ``a`` and ``b``.

    ``forward(embed_a, embed_b, embed_a_ori, embed_b_ori, pair_mask)`` takes the
    two reconstructions and the two originals, all (B, D), and a (B,) bool mask
    of the rows that are pairs. The reconstructions are L2-normalised, the
    originals are used as they are. For each group ``(s, A, B')`` in
    ``(self: b, a), (ori: b_ori, a_ori), (cl: a_ori, b_ori)`` the logits are
    ``s * a @ A.T`` and ``s * b @ B'.T`` over all ranks' rows, non-pair columns
    are excluded (filled with the dtype's most negative finite value), and each
    pair row's cross-entropy against its own column is averaged as
    ``sum(ce_a + ce_b) / (2 * max(#pairs, 1))``; the loss is the mean of the three
    groups (0 when no row is a pair). ``s = exp(min(t, ln 100))`` with a learnable
    ``t`` per group, initialised at ln(1 / 0.07).

    >>> import torch
    >>> _ = torch.manual_seed(0)
    >>> loss = SidContrastiveLoss()
    >>> views = [torch.randn(4, 8) for _ in range(4)]
    >>> loss(*views, pair_mask=torch.zeros(4, dtype=torch.bool)).item()
    0.0
    """

    def __init__(self) -> None:
        super().__init__()
        self.logit_scale_self = nn.Parameter(torch.tensor(LOGIT_SCALE_INIT))
        self.logit_scale_ori = nn.Parameter(torch.tensor(LOGIT_SCALE_INIT))
        self.logit_scale_cl = nn.Parameter(torch.tensor(LOGIT_SCALE_INIT))

    @staticmethod
    def _group_term(
        logits_a: torch.Tensor,
        logits_b: torch.Tensor,
        excluded: torch.Tensor,
        targets: torch.Tensor,
        pairs: torch.Tensor,
        n_pairs: torch.Tensor,
    ) -> torch.Tensor:
        fill = torch.finfo(logits_a.dtype).min
        total = logits_a.new_zeros((), dtype=torch.float32)
        for logits in (logits_a, logits_b):
            ce = F.cross_entropy(logits.masked_fill(excluded, fill), targets, reduction="none")
            total = total + torch.where(pairs, ce, torch.zeros_like(ce)).float().sum()
        return total / (2 * n_pairs)

    def forward(
        self,
        embed_a: torch.Tensor,
        embed_b: torch.Tensor,
        embed_a_ori: torch.Tensor,
        embed_b_ori: torch.Tensor,
        pair_mask: torch.Tensor,
    ) -> torch.Tensor:
        """Scalar loss; see the class docstring."""
        n = embed_a.shape[0]
        for name, t in (
            ("embed_b", embed_b),
            ("embed_a_ori", embed_a_ori),
            ("embed_b_ori", embed_b_ori),
        ):
            if t.shape != embed_a.shape:
                raise ValueError(
                    f"SidContrastiveLoss: {name} is {tuple(t.shape)}, "
                    f"embed_a {tuple(embed_a.shape)}"
                )
        if pair_mask.shape != (n,):
            raise ValueError(
                f"SidContrastiveLoss: pair_mask must be ({n},), got {tuple(pair_mask.shape)}"
            )
        pairs = pair_mask.bool()
        a = F.normalize(embed_a, p=2, dim=-1)
        b = F.normalize(embed_b, p=2, dim=-1)
        a_all, b_all, a_ori_all, b_ori_all = _gather_rows([a, b, embed_a_ori, embed_b_ori])
        excluded = ~_gather_mask(pairs)[None, :]
        rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
        targets = rank * n + torch.arange(n, device=embed_a.device)
        n_pairs = pairs.float().sum().clamp(min=1)
        groups = (
            (self.logit_scale_self, b_all, a_all),
            (self.logit_scale_ori, b_ori_all, a_ori_all),
            (self.logit_scale_cl, a_ori_all, b_ori_all),
        )
        loss = embed_a.new_zeros((), dtype=torch.float32)
        for log_scale, target_a, target_b in groups:
            scale = log_scale.clamp(max=LOGIT_SCALE_MAX).exp()
            loss = loss + self._group_term(
                scale * a @ target_a.T, scale * b @ target_b.T, excluded, targets, pairs, n_pairs
            )
        return loss / 3
