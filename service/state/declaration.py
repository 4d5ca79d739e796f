"""A run's metric declaration: defaults, canonical text, the metric objects it builds,
and what each metric is fed from a batch.

>>> from rankboard.protos import metric_pb2
>>> declaration_text([metric_pb2.MetricConfig(auc=metric_pb2.AUC(thresholds=0))])
'auc { thresholds: 0 }'
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
from google.protobuf import text_format

from rankboard.protos import metric_pb2
from rankboard.service import metrics as rbm
from rankboard.service.errors import InvalidBatch
from rankboard.service.metrics.base import RankMetric
from rankboard.service.metrics.builder import AnyMetricConfig
from rankboard.service.state.batch import Batch

__all__ = [
    "Config",
    "build_metrics",
    "declaration_text",
    "default_declaration",
    "label_kind_of",
    "metric_inputs",
    "retained_nbytes",
]

Config = AnyMetricConfig  # an eval or a train metric's config


def label_kind_of(batch: Batch) -> str:
    """``multiclass`` for (n, C) predictions, ``binary`` for labels in {0, 1}, else ``real``."""
    if batch.predictions.dim() == 2:
        return "multiclass"
    labels = batch.labels
    return "binary" if bool(((labels == 0) | (labels == 1)).all()) else "real"


def default_declaration(batch: Batch) -> list[Config]:
    """The metrics of a run whose first batch declares none.

    eval, binary labels: exact ``auc``, ``normalized_entropy`` and, when grouping
    keys come, ``grouped_auc`` on the first key column; eval, real labels: exact
    ``xauc``, ``mean_squared_error``, ``mean_absolute_error``; eval, multi-class:
    exact ``multiclass_auc`` and ``accuracy``; train: decayed ``auc`` (binary),
    ``accuracy`` (multi-class) or ``mean_squared_error`` (real).
    """
    kind = label_kind_of(batch)
    if batch.key.phase == "train":
        cfg = metric_pb2.TrainMetricConfig()
        {"binary": cfg.auc, "real": cfg.mean_squared_error, "multiclass": cfg.accuracy}[
            kind
        ].SetInParent()
        return [cfg]
    out: list[Config] = []
    if kind == "binary":
        out.append(metric_pb2.MetricConfig(auc=metric_pb2.AUC(thresholds=0)))
        out.append(metric_pb2.MetricConfig(normalized_entropy=metric_pb2.NormalizedEntropy()))
        if batch.grouping_keys:
            name = next(iter(batch.grouping_keys))
            out.append(
                metric_pb2.MetricConfig(grouped_auc=metric_pb2.GroupedAUC(grouping_key=name))
            )
    elif kind == "real":
        for field_name in ("xauc", "mean_squared_error", "mean_absolute_error"):
            eval_cfg = metric_pb2.MetricConfig()
            getattr(eval_cfg, field_name).SetInParent()
            out.append(eval_cfg)
    else:
        out.append(metric_pb2.MetricConfig(multiclass_auc=metric_pb2.MulticlassAUC(thresholds=0)))
        out.append(metric_pb2.MetricConfig(accuracy=metric_pb2.Accuracy()))
    return out


def declaration_text(configs: Sequence[Config]) -> str:
    """Canonical text of a declaration (one config per line), for comparison and display.

    Configs are normalized first (an older client's legacy train decay fields read as
    tzrec's), so the same declaration from old and new clients compares equal.
    """
    lines = []
    for c in configs:
        norm = type(c)()
        norm.CopyFrom(c)  # type: ignore[arg-type]  # the same message type as c
        lines.append(text_format.MessageToString(rbm.normalize_config(norm), as_one_line=True))
    return "\n".join(lines)


def build_metrics(
    phase: str, configs: Sequence[Config], device: torch.device | None = None
) -> dict[str, RankMetric]:
    """The metric objects of a ``phase`` run declared with ``configs``, by key; moved to
    ``device`` when one is given (a fresh window's metrics). ``InvalidBatch`` when the
    declaration does not build."""
    try:
        if phase == "train":
            train = [c for c in configs if isinstance(c, metric_pb2.TrainMetricConfig)]
            metrics: dict[str, RankMetric] = dict(rbm.create_train_metrics(train))
        else:
            evals = [c for c in configs if isinstance(c, metric_pb2.MetricConfig)]
            metrics = dict(rbm.create_metrics(evals))
    except ValueError as err:
        raise InvalidBatch(f"bad metric declaration: {err}") from None
    if device is not None:
        for metric in metrics.values():
            metric.to(device)
    return metrics


def metric_inputs(
    metric: RankMetric, name: str, batch: Batch, device: torch.device
) -> dict[str, Any]:
    kwargs: dict[str, Any] = {}
    if batch.weights is not None and getattr(metric, "supports_weights", False):
        kwargs["weights"] = batch.weights.to(device, non_blocking=True)
    if getattr(metric, "needs_grouping_key", False):
        key_name = str(getattr(metric, "grouping_key_name", ""))
        keys = batch.grouping_keys.get(key_name)
        if keys is None:
            raise InvalidBatch(
                f"metric {name!r} groups by {key_name!r} but the batch has no grouping key"
                f" column of that name (it has: {sorted(batch.grouping_keys) or 'none'})"
            )
        kwargs["grouping_key"] = keys.to(device, non_blocking=True)
    return kwargs


def retained_nbytes(metrics: Iterable[RankMetric]) -> int:
    """Bytes held by the per-sample (list) states of ``metrics``, wrapped metrics included.

    >>> import torch
    >>> m = rbm.AUC(thresholds=0)
    >>> m.update(torch.rand(10), torch.randint(0, 2, (10,)))
    >>> retained_nbytes([m])  # float32 prediction + float32 label per sample
    80
    """
    return sum(metric.memory_bytes() for metric in metrics)
