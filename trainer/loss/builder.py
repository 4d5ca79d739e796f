"""Loss modules from tzrec ``LossConfig`` messages.

A ``LossConfig`` sets one loss of its ``loss`` oneof (ranking losses) or of its
``sid_loss`` oneof (the RQ-VAE losses of semantic-ID models), as in tzrec.

Example::

    >>> from rankboard.protos import loss_pb2, parse_text
    >>> cfg = parse_text("binary_focal_loss { gamma: 1.0 alpha: 0.25 }", loss_pb2.LossConfig())
    >>> loss_name(cfg), create_loss(cfg)
    ('binary_focal_loss', BinaryFocalLoss())
    >>> create_loss(cfg, reduction="none").reduction
    'none'
    >>> cfg = parse_text('recon_loss { recon_type: "cos" }', loss_pb2.LossConfig())
    >>> loss_name(cfg), create_loss(cfg).recon_type
    ('recon_loss', 'cos')
"""

from __future__ import annotations

from torch import nn

from rankboard.protos import loss_pb2
from rankboard.trainer.loss.jrc import JRCLoss
from rankboard.trainer.loss.losses import (
    BinaryCrossEntropyLoss,
    BinaryFocalLoss,
    L2Loss,
    SoftmaxCrossEntropyLoss,
)
from rankboard.trainer.loss.sid import SidCommitmentLoss, SidContrastiveLoss, SidReconLoss

__all__ = ["create_loss", "loss_name"]

_ONEOFS = ("loss", "sid_loss")


def _f32(value: float) -> float:
    return float(f"{value:.7g}")


def loss_name(cfg: loss_pb2.LossConfig, suffix: str = "") -> str:
    """The key of ``cfg``'s loss in loss dicts and logs: the set field's name plus ``suffix``.

    >>> from rankboard.protos import loss_pb2, parse_text
    >>> loss_name(parse_text("l2_loss {}", loss_pb2.LossConfig()), "_ctr")
    'l2_loss_ctr'
    """
    names = [n for n in (cfg.WhichOneof(o) for o in _ONEOFS) if n is not None]
    if not names:
        raise ValueError(
            "LossConfig has no loss set: choose one of its loss (ranking) or sid_loss fields"
        )
    if len(names) > 1:
        raise ValueError(
            f"LossConfig sets both {names[0]} (loss) and {names[1]} (sid_loss): "
            "use one LossConfig per loss"
        )
    return names[0] + suffix


def create_loss(cfg: loss_pb2.LossConfig, reduction: str = "mean") -> nn.Module:
    """The loss module of ``cfg`` (float fields read as their 7-digit decimal).

    ``reduction`` goes to the ranking losses as in tzrec, which builds them with
    ``"none"`` when the model has sample weights; the SID losses always reduce to
    a scalar and take only ``"mean"``.

    >>> from rankboard.protos import loss_pb2, parse_text
    >>> create_loss(parse_text('jrc_loss { session_name: "req" alpha: 0.3 }',
    ...                        loss_pb2.LossConfig())).alpha
    0.3
    """
    name = loss_name(cfg)
    sub = getattr(cfg, name)
    if name == "binary_cross_entropy":
        return BinaryCrossEntropyLoss(_f32(sub.label_smoothing), reduction=reduction)
    if name == "softmax_cross_entropy":
        return SoftmaxCrossEntropyLoss(_f32(sub.label_smoothing), reduction=reduction)
    if name == "l2_loss":
        return L2Loss(reduction=reduction)
    if name == "jrc_loss":
        return JRCLoss(_f32(sub.alpha), session_name=sub.session_name, reduction=reduction)
    if name == "binary_focal_loss":
        return BinaryFocalLoss(_f32(sub.gamma), _f32(sub.alpha), reduction=reduction)
    if reduction != "mean":
        raise ValueError(f"{name} reduces to a scalar: reduction must be 'mean', got {reduction!r}")
    if name == "recon_loss":
        return SidReconLoss(sub.recon_type)
    if name == "commitment_loss":
        weights = [_f32(w) for w in sub.latent_weight] or [1.0, 0.5]
        return SidCommitmentLoss(weights, sub.commitment_type)
    if name == "contrastive_loss":
        return SidContrastiveLoss()
    raise ValueError(f"unsupported loss {name!r}")  # pragma: no cover - new proto field
