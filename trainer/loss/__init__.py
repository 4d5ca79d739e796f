"""Losses from tzrec ``LossConfig`` messages: BCE, softmax CE, L2, binary focal, JRC.

Example::

    >>> import torch
    >>> from rankboard.trainer.loss import L2Loss
    >>> L2Loss()(torch.zeros(2), torch.ones(2)).item()
    1.0
"""

from rankboard.trainer.loss.builder import create_loss, loss_name
from rankboard.trainer.loss.jrc import JRCLoss, jrc_loss
from rankboard.trainer.loss.losses import (
    BinaryCrossEntropyLoss,
    BinaryFocalLoss,
    L2Loss,
    SoftmaxCrossEntropyLoss,
)

__all__ = [
    "BinaryCrossEntropyLoss",
    "BinaryFocalLoss",
    "JRCLoss",
    "L2Loss",
    "SoftmaxCrossEntropyLoss",
    "create_loss",
    "jrc_loss",
    "loss_name",
]
