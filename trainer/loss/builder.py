"""Loss modules from tzrec ``LossConfig`` messages.

Example::

    >>> from rankboard.protos import loss_pb2, parse_text
    >>> cfg = parse_text("binary_focal_loss { gamma: 1.0 alpha: 0.25 }", loss_pb2.LossConfig())
    >>> loss_name(cfg), create_loss(cfg)
    ('binary_focal_loss', BinaryFocalLoss())
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

__all__ = ["create_loss", "loss_name"]


def _f32(value: float) -> float:
    return float(f"{value:.7g}")


def loss_name(cfg: loss_pb2.LossConfig, suffix: str = "") -> str:
    """The key of ``cfg``'s loss in loss dicts and logs: the oneof name plus ``suffix``.

    >>> from rankboard.protos import loss_pb2, parse_text
    >>> loss_name(parse_text("l2_loss {}", loss_pb2.LossConfig()), "_ctr")
    'l2_loss_ctr'
    """
    name = cfg.WhichOneof("loss")
    if name is None:
        raise ValueError("LossConfig has no loss set: choose one of its loss fields")
    return name + suffix


def create_loss(cfg: loss_pb2.LossConfig) -> nn.Module:
    """The loss module of ``cfg`` (float fields read as their 7-digit decimal).

    >>> from rankboard.protos import loss_pb2, parse_text
    >>> create_loss(parse_text('jrc_loss { session_name: "req" alpha: 0.3 }',
    ...                        loss_pb2.LossConfig())).alpha
    0.3
    """
    name = loss_name(cfg)
    sub = getattr(cfg, name)
    if name == "binary_cross_entropy":
        return BinaryCrossEntropyLoss(label_smoothing=_f32(sub.label_smoothing))
    if name == "softmax_cross_entropy":
        return SoftmaxCrossEntropyLoss(label_smoothing=_f32(sub.label_smoothing))
    if name == "l2_loss":
        return L2Loss()
    if name == "jrc_loss":
        return JRCLoss(alpha=_f32(sub.alpha), session_name=sub.session_name)
    if name == "binary_focal_loss":
        return BinaryFocalLoss(gamma=_f32(sub.gamma), alpha=_f32(sub.alpha))
    raise ValueError(f"unsupported loss {name!r}")  # pragma: no cover - new proto field
