"""rankboard's metrics engine.

Two layers, as in torcheval / torchmetrics: pure functions for the math in
:mod:`rankboard.service.metrics.functional`, and stateful torchmetrics ``Metric`` classes
(update / compute / reset; states registered with ``add_state`` and persistent, so they
merge, save and load). Builders turn the tzrec-compatible config protos into metrics.

Calling convention of every class: ``update(preds, target, *, weights=None,
grouping_key=None)``; ``check_inputs`` with the same arguments raises the ``ValueError``
``update`` would raise, touching nothing; ``supports_weights``, ``needs_grouping_key``
and ``label_kind`` say what to pass; ``compute()`` is a 0-d float64 tensor, NaN where
undefined.
"""

from rankboard.service.metrics import builder
from rankboard.service.metrics.auc import AUC, MulticlassAUC
from rankboard.service.metrics.base import RankMetric
from rankboard.service.metrics.builder import *  # noqa: F403 (its __all__, re-exported below)
from rankboard.service.metrics.classification import Accuracy, RecallAtK
from rankboard.service.metrics.entropy import NormalizedEntropy
from rankboard.service.metrics.extra import (
    AUPRC,
    Calibration,
    LogLoss,
    RecallSession,
    RootMeanSquaredError,
    RSquared,
)
from rankboard.service.metrics.grouped import GroupedAUC, GroupedXAUC
from rankboard.service.metrics.regression import MeanAbsoluteError, MeanSquaredError
from rankboard.service.metrics.sid import RelativeL1, UniqueRatio
from rankboard.service.metrics.train import DecayAUC, TrainMetricWrapper
from rankboard.service.metrics.windowed import Windowed
from rankboard.service.metrics.xauc import XAUC

__all__ = [
    "AUC",
    "AUPRC",
    "XAUC",
    "Accuracy",
    "Calibration",
    "DecayAUC",
    "GroupedAUC",
    "GroupedXAUC",
    "LogLoss",
    "MeanAbsoluteError",
    "MeanSquaredError",
    "MulticlassAUC",
    "NormalizedEntropy",
    "RSquared",
    "RankMetric",
    "RecallAtK",
    "RecallSession",
    "RelativeL1",
    "RootMeanSquaredError",
    "TrainMetricWrapper",
    "UniqueRatio",
    "Windowed",
]
__all__ += builder.__all__  # create_metric(s), create_train_metric(s), ...
