"""Losses from tzrec ``LossConfig`` messages: BCE, softmax CE, L2, binary focal, JRC, SID.

Example::

    >>> import torch
    >>> from rankboard.trainer.loss import L2Loss
    >>> L2Loss()(torch.zeros(2), torch.ones(2)).item()
    1.0
"""

from rankboard.trainer.loss.builder import create_loss, loss_name
from rankboard.trainer.loss.jrc import JRC_REDUCTIONS, JRCLoss, jrc_loss
from rankboard.trainer.loss.losses import (
    REDUCTIONS,
    BinaryCrossEntropyLoss,
    BinaryFocalLoss,
    L2Loss,
    SoftmaxCrossEntropyLoss,
)
from rankboard.trainer.loss.sid import SidCommitmentLoss, SidContrastiveLoss, SidReconLoss

__all__ = [
    "JRC_REDUCTIONS",
    "REDUCTIONS",
    "BinaryCrossEntropyLoss",
    "BinaryFocalLoss",
    "JRCLoss",
    "L2Loss",
    "SidCommitmentLoss",
    "SidContrastiveLoss",
    "SidReconLoss",
    "SoftmaxCrossEntropyLoss",
    "create_loss",
    "jrc_loss",
    "loss_name",
]
