"""Pure functions for the metric math; the classes in :mod:`rankboard.service.metrics`
hold state and call these."""

from rankboard.service.metrics.functional.auc import binary_auc, exact_auc, multiclass_auc
from rankboard.service.metrics.functional.classification import accuracy, recall_at_k
from rankboard.service.metrics.functional.entropy import normalized_entropy
from rankboard.service.metrics.functional.grouped_auc import grouped_auc, grouped_auc_stats
from rankboard.service.metrics.functional.histogram import auc_from_histogram, binned_histogram
from rankboard.service.metrics.functional.regression import (
    mean_absolute_error,
    mean_squared_error,
)
from rankboard.service.metrics.functional.xauc import (
    grouped_xauc,
    sampled_grouped_xauc,
    sampled_xauc,
    xauc,
)

__all__ = [
    "accuracy",
    "auc_from_histogram",
    "binary_auc",
    "binned_histogram",
    "exact_auc",
    "grouped_auc",
    "grouped_auc_stats",
    "grouped_xauc",
    "mean_absolute_error",
    "mean_squared_error",
    "multiclass_auc",
    "normalized_entropy",
    "recall_at_k",
    "sampled_grouped_xauc",
    "sampled_xauc",
    "xauc",
]
