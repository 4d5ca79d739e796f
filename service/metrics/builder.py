"""Build metric objects from the tzrec-compatible config protos.

The key of a metric is its oneof field name (``auc``, ``grouped_auc``, ...); a task that
declares the same metric again gets ``auc_2``, ``auc_3``, ... Proto2 presence
(``HasField``) decides the XAUC modes: sampling only where ``sample_ratio`` /
``max_pairs`` / ``max_pairs_per_group`` are set explicitly. ``auc { thresholds: T }``
means ``T`` threshold points (tzrec's meaning); ``auc { bins: B }`` equal-width bins.

Train configs written by older rankboard clients carry ``decay_rate`` / ``decay_step``
under the numbers 100 / 101 (now ``legacy_decay_rate`` / ``legacy_decay_step``);
:func:`normalize_config` moves them to tzrec's fields (20 / 21).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rankboard.protos import metric_pb2
from rankboard.service.metrics import extra
from rankboard.service.metrics.auc import AUC, MulticlassAUC
from rankboard.service.metrics.base import RankMetric
from rankboard.service.metrics.classification import Accuracy, RecallAtK
from rankboard.service.metrics.entropy import NormalizedEntropy
from rankboard.service.metrics.grouped import GroupedAUC, GroupedXAUC
from rankboard.service.metrics.regression import MeanAbsoluteError, MeanSquaredError
from rankboard.service.metrics.sid import RelativeL1, UniqueRatio
from rankboard.service.metrics.train import DecayAUC, TrainMetricWrapper
from rankboard.service.metrics.windowed import Windowed
from rankboard.service.metrics.xauc import XAUC

__all__ = [
    "create_metric",
    "create_metrics",
    "create_train_metric",
    "create_train_metrics",
    "metric_key",
    "normalize_config",
]

AnyMetricConfig = metric_pb2.MetricConfig | metric_pb2.TrainMetricConfig


def metric_key(cfg: AnyMetricConfig) -> str:
    """The oneof field name of ``cfg``; ``ValueError`` when no metric is set.

    >>> metric_key(metric_pb2.MetricConfig(grouped_auc=metric_pb2.GroupedAUC(grouping_key="u")))
    'grouped_auc'
    """
    name = cfg.WhichOneof("metric")
    if name is None:
        raise ValueError("metric config sets no metric (empty oneof 'metric')")
    return name


def _grouping_key(msg: Any, what: str) -> str:
    if not msg.grouping_key:
        raise ValueError(f"{what}: grouping_key must be a non-empty feature name")
    return str(msg.grouping_key)


def normalize_config(cfg: AnyMetricConfig) -> AnyMetricConfig:
    """``cfg`` with legacy train fields moved to tzrec's (in place; returned for chaining).

    A ``TrainMetricConfig`` decoded from an older rankboard message has ``decay_rate`` /
    ``decay_step`` in ``legacy_decay_rate`` / ``legacy_decay_step``; they become the tzrec
    fields unless those are set. Other configs are returned unchanged.

    >>> old = metric_pb2.TrainMetricConfig(auc=metric_pb2.AUC(), legacy_decay_step=5)
    >>> normalize_config(old).decay_step, old.HasField("legacy_decay_step")
    (5, False)
    """
    if isinstance(cfg, metric_pb2.TrainMetricConfig):
        for legacy, field in (
            ("legacy_decay_rate", "decay_rate"),
            ("legacy_decay_step", "decay_step"),
        ):
            if cfg.HasField(legacy):
                if not cfg.HasField(field):
                    setattr(cfg, field, getattr(cfg, legacy))
                cfg.ClearField(legacy)
    return cfg


def _auc_binning(msg: Any) -> dict[str, Any]:
    if msg.HasField("bins"):
        if msg.HasField("thresholds"):
            raise ValueError(
                "auc: set thresholds (threshold points, tzrec's meaning) or bins "
                "(equal-width bins), not both"
            )
        return {"thresholds": 0, "bins": msg.bins}
    return {"thresholds": msg.thresholds, "bins": 0}


def _seed(msg: Any) -> int | None:
    return msg.seed if msg.HasField("seed") else None


def _build(name: str, msg: Any, train: bool) -> RankMetric:
    if name == "auc":
        return DecayAUC(**_auc_binning(msg)) if train else AUC(**_auc_binning(msg))
    if name == "multiclass_auc":
        return MulticlassAUC(**_auc_binning(msg), average=msg.average)
    if name == "recall_at_k":
        return RecallAtK(top_k=msg.top_k)
    if name == "mean_absolute_error":
        return MeanAbsoluteError()
    if name == "mean_squared_error":
        return MeanSquaredError()
    if name == "accuracy":
        return Accuracy(threshold=msg.threshold, top_k=msg.top_k, inclusive=msg.inclusive_threshold)
    if name == "grouped_auc":
        return GroupedAUC(
            grouping_key=_grouping_key(msg, "grouped_auc"),
            skip_constant_groups=msg.skip_constant_groups,
        )
    if name == "xauc":
        return XAUC(
            sample_ratio=msg.sample_ratio if msg.HasField("sample_ratio") else None,
            max_pairs=msg.max_pairs if msg.HasField("max_pairs") else None,
            in_batch=msg.in_batch,
            seed=_seed(msg),
        )
    if name == "grouped_xauc":
        return GroupedXAUC(
            grouping_key=_grouping_key(msg, "grouped_xauc"),
            max_pairs_per_group=(
                msg.max_pairs_per_group if msg.HasField("max_pairs_per_group") else None
            ),
            seed=_seed(msg),
        )
    if name == "normalized_entropy":
        return NormalizedEntropy(eta=msg.eta, include_logloss=msg.include_logloss)
    if name == "relative_l1":
        return RelativeL1(epsilon=msg.epsilon)
    if name == "unique_ratio":
        return UniqueRatio()
    if name == "root_mean_squared_error":
        return extra.RootMeanSquaredError()
    if name == "r_squared":
        return extra.RSquared()
    if name == "log_loss":
        return extra.LogLoss(eta=msg.eta)
    if name == "calibration":
        return extra.Calibration()
    if name == "auprc":
        return extra.AUPRC()
    if name == "recall_session":
        return extra.RecallSession(
            grouping_key=_grouping_key(msg, "recall_session"),
            top_k=msg.top_k,
            rank_labels=msg.rank_labels,
        )
    raise ValueError(f"unsupported metric {name!r}")


def create_metric(cfg: metric_pb2.MetricConfig) -> RankMetric:
    """The evaluation metric configured by ``cfg``.

    ``step_decay_rate`` (an older rankboard field, never used) is refused.

    >>> m = create_metric(metric_pb2.MetricConfig(auc=metric_pb2.AUC(thresholds=0)))
    >>> type(m).__name__, m.thresholds
    ('AUC', 0)
    >>> create_metric(metric_pb2.MetricConfig(auc=metric_pb2.AUC(), step_decay_rate=0.5))
    Traceback (most recent call last):
    ...
    ValueError: auc: MetricConfig.step_decay_rate is not supported: ...
    """
    name = metric_key(cfg)
    msg = getattr(cfg, name)
    if cfg.HasField("step_decay_rate"):
        raise ValueError(
            f"{name}: MetricConfig.step_decay_rate is not supported: tzrec's MetricConfig "
            "has no such field and evaluation metrics are not smoothed; to smooth a metric "
            "over training steps declare it as a train metric (TrainMetricConfig.decay_rate "
            "and decay_step), or use window_size for the last samples only"
        )
    if cfg.HasField("window_size"):
        size = int(cfg.window_size)
        if size < 1:
            raise ValueError(f"{name}: window_size must be >= 1, got {size}")
        _build(name, msg, train=False)  # a bad config fails here, not at the first update
        return Windowed(lambda: _build(name, msg, train=False), window_size=size)
    return _build(name, msg, train=False)


def create_train_metric(cfg: metric_pb2.TrainMetricConfig) -> TrainMetricWrapper:
    """The training metric configured by ``cfg``: AUC becomes a :class:`DecayAUC`.

    >>> w = create_train_metric(metric_pb2.TrainMetricConfig(auc=metric_pb2.AUC(), decay_step=10))
    >>> type(w.metric).__name__, w.decay_step, round(w.decay_rate, 2)
    ('DecayAUC', 10, 0.9)
    """
    name = metric_key(cfg)
    normalize_config(cfg)
    metric = _build(name, getattr(cfg, name), train=True)
    return TrainMetricWrapper(metric, decay_rate=cfg.decay_rate, decay_step=cfg.decay_step)


def _unique_keys(cfgs: Sequence[AnyMetricConfig]) -> list[str]:
    seen: dict[str, int] = {}
    keys = []
    for cfg in cfgs:
        base = metric_key(cfg)
        seen[base] = seen.get(base, 0) + 1
        keys.append(base if seen[base] == 1 else f"{base}_{seen[base]}")
    return keys


def create_metrics(cfgs: Sequence[metric_pb2.MetricConfig]) -> dict[str, RankMetric]:
    """Metrics keyed by oneof name, repeats suffixed ``_2``, ``_3``, ...

    >>> cfg = metric_pb2.MetricConfig(auc=metric_pb2.AUC())
    >>> list(create_metrics([cfg, cfg]))
    ['auc', 'auc_2']
    """
    return {k: create_metric(c) for k, c in zip(_unique_keys(cfgs), cfgs, strict=True)}


def create_train_metrics(
    cfgs: Sequence[metric_pb2.TrainMetricConfig],
) -> dict[str, TrainMetricWrapper]:
    """Training metrics keyed like :func:`create_metrics`."""
    return {k: create_train_metric(c) for k, c in zip(_unique_keys(cfgs), cfgs, strict=True)}
