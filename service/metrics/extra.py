"""Metrics torchrec users rely on that tzrec lacks: RMSE, R², log loss, calibration, AUPRC
and session recall (the sliding window over the last ``window_size`` samples,
:class:`~rankboard.service.metrics.windowed.Windowed`, is importable from here too).

Definitions follow torchrec's ``torchrec/metrics`` (mse.py, ne.py, calibration.py,
auprc.py, recall_session.py, and ``window_size`` of ``RecMetric``), written here from
those definitions, weighted like torchrec. Where torchrec reads 0 (or 1) for an undefined
value, rankboard reads NaN (see docs/metric-conventions.md).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import Tensor

from rankboard.service.metrics._weights import aligned_weights
from rankboard.service.metrics.base import RankMetric
from rankboard.service.metrics.entropy import LogLossSums
from rankboard.service.metrics.functional._sums import error_sums, logloss_sums
from rankboard.service.metrics.functional._validation import Batch, to_numpy
from rankboard.service.metrics.regression import MeanSquaredError
from rankboard.service.metrics.windowed import Windowed

__all__ = [
    "AUPRC",
    "Calibration",
    "LogLoss",
    "RSquared",
    "RecallSession",
    "RootMeanSquaredError",
    "Windowed",
    "auprc",
]


def _zero() -> Tensor:
    return torch.tensor(0.0, dtype=torch.float64)


class RootMeanSquaredError(MeanSquaredError):
    """Square root of the weighted mean squared error (torchrec's ``rmse``): the states of
    :class:`MeanSquaredError`.

    >>> m = RootMeanSquaredError()
    >>> m.update(torch.tensor([1.0, 2.0]), torch.tensor([2.0, 4.0]))
    >>> round(m.compute().item(), 6)  # sqrt((1 + 4) / 2)
    1.581139
    """

    def compute(self) -> Tensor:
        """RMSE, 0-d float64; NaN without (weight of) samples (torchrec: 0)."""
        return torch.sqrt(super().compute())


class RSquared(RankMetric):
    """Coefficient of determination ``1 - SSE / SST`` with weights (torchrec's ``r_squared``):
    ``SST = sum w y^2 - (sum w y)^2 / sum w``.

    NaN without samples and when the labels do not vary (``SST == 0``; torchrec reads 1.0
    there, whatever the errors).

    >>> m = RSquared()
    >>> m.update(torch.tensor([1.0, 2.0, 3.5]), torch.tensor([1.0, 2.0, 3.0]))
    >>> round(m.compute().item(), 6)  # 1 - 0.25 / 2
    0.875
    """

    supports_weights = True
    label_kind = "real"

    # states (registered by add_state in __init__)
    sum_error: Tensor
    sum_weight: Tensor
    sum_label: Tensor
    sum_label_sq: Tensor

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        for name in ("sum_error", "sum_weight", "sum_label", "sum_label_sq"):
            self.add_state(name, _zero(), dist_reduce_fx="sum", persistent=True)

    def _update_batch(self, b: Batch) -> None:
        """Add a batch: ``preds`` (n,), ``target`` (n,), optional ``weights`` (n,) >= 0."""
        e, w = error_sums(b.preds, b.target, b.weights, squared=True)
        y = b.target.to(torch.float64)
        wy = y if b.weights is None else y * b.weights.to(torch.float64)
        self.sum_error += e
        self.sum_weight += w
        self.sum_label += wy.sum()
        self.sum_label_sq += (wy * y).sum()

    def compute(self) -> Tensor:
        """R², 0-d float64 (NaN when undefined)."""
        w = self.sum_weight
        ok = w > 0
        sst = self.sum_label_sq - self.sum_label**2 / torch.where(ok, w, 1.0)
        ok = ok & (sst > 0)
        return torch.where(ok, 1.0 - self.sum_error / torch.where(ok, sst, 1.0), math.nan)


class LogLoss(LogLossSums):
    """Weighted mean binary cross-entropy, predictions clamped to ``[eta, 1 - eta]``: the
    log loss torchrec's NE reports beside NE (``include_logloss``).

    >>> m = LogLoss()
    >>> m.update(torch.tensor([0.5, 0.5]), torch.tensor([0, 1]))
    >>> round(m.compute().item(), 6)  # log 2
    0.693147
    """

    # states (registered by add_state in __init__)
    sum_logloss: Tensor
    sum_weight: Tensor

    def __init__(self, eta: float = 1e-12, **kwargs: Any) -> None:
        super().__init__(eta, **kwargs)
        self.add_state("sum_logloss", _zero(), dist_reduce_fx="sum", persistent=True)
        self.add_state("sum_weight", _zero(), dist_reduce_fx="sum", persistent=True)

    def _update_batch(self, b: Batch) -> None:
        """Add a batch: ``preds`` (n,) probabilities, ``target`` (n,) in {0, 1}."""
        ce, _, w = logloss_sums(b.preds, b.target, b.weights, self.eta)
        self.sum_logloss += ce
        self.sum_weight += w

    def compute(self) -> Tensor:
        """Mean log loss, 0-d float64; NaN without (weight of) samples."""
        return self.mean_logloss()


class Calibration(RankMetric):
    """Sum of predictions over sum of labels, weighted (torchrec's ``calibration``, a.k.a.
    COPC): 1 is calibrated, above 1 over-predicts. NaN while the labels sum to 0 (torchrec: 0).

    >>> m = Calibration()
    >>> m.update(torch.tensor([0.2, 0.6, 0.4]), torch.tensor([0, 1, 0]))
    >>> round(m.compute().item(), 6)
    1.2
    """

    supports_weights = True
    label_kind = "real"

    # states (registered by add_state in __init__)
    sum_pred: Tensor
    sum_label: Tensor

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.add_state("sum_pred", _zero(), dist_reduce_fx="sum", persistent=True)
        self.add_state("sum_label", _zero(), dist_reduce_fx="sum", persistent=True)

    def _update_batch(self, b: Batch) -> None:
        """Add a batch: ``preds`` (n,), ``target`` (n,) (0/1 or real), ``weights`` (n,)."""
        p, y = b.preds.to(torch.float64), b.target.to(torch.float64)
        if b.weights is not None:
            w = b.weights.to(torch.float64)
            p, y = p * w, y * w
        self.sum_pred += p.sum()
        self.sum_label += y.sum()

    def compute(self) -> Tensor:
        """Calibration, 0-d float64 (NaN while the weighted labels sum to 0)."""
        d = self.sum_label
        return torch.where(d > 0, self.sum_pred / torch.where(d > 0, d, 1.0), math.nan)


def auprc(preds: Tensor, target: Tensor, weights: Tensor | None = None) -> Tensor:
    """Area under the precision-recall curve as torchrec computes it (unchecked inputs).

    Step-wise over the distinct thresholds, highest first:
    ``sum_k (R_k - R_{k-1}) P_k`` (sklearn's ``average_precision_score``, weighted).
    NaN without a positive (weight).

    >>> auprc(torch.tensor([0.1, 0.4, 0.35, 0.8]), torch.tensor([0.0, 0.0, 1.0, 1.0])).item()
    0.8333333333333333
    """
    if preds.numel() == 0:
        return torch.tensor(math.nan, dtype=torch.float64)
    p = to_numpy(preds.detach().cpu())
    y = to_numpy(target.detach().cpu()).astype(np.float64)
    w = np.ones_like(y) if weights is None else to_numpy(weights.detach().cpu()).astype(np.float64)
    order = np.argsort(-p, kind="stable")
    ps, ys, ws = p[order], y[order], w[order]
    tp = np.cumsum(ws * ys)
    fp = np.cumsum(ws * (1.0 - ys))
    last = np.append(ps[1:] != ps[:-1], True)  # the last index of each distinct threshold
    tp, fp = tp[last], fp[last]
    total = tp[-1]
    if total <= 0:
        return torch.tensor(math.nan, dtype=torch.float64)
    denom = tp + fp
    precision = np.divide(tp, denom, out=np.ones_like(tp), where=denom > 0)
    recall = tp / total
    widths = np.diff(np.concatenate(([0.0], recall)))
    return torch.tensor(float(np.sum(widths * precision)), dtype=torch.float64)


class AUPRC(RankMetric):
    """Exact weighted area under the precision-recall curve (torchrec's ``auprc``); keeps
    every sample (float32 preds, targets, weights) and sorts at compute.

    >>> m = AUPRC()
    >>> m.update(torch.tensor([0.1, 0.4, 0.35, 0.8]), torch.tensor([0, 0, 1, 1]))
    >>> round(m.compute().item(), 6)
    0.833333
    """

    supports_weights = True
    label_kind = "binary"

    # states (registered by add_state in __init__)
    preds: list[Tensor]
    target: list[Tensor]
    weights: list[Tensor]

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.add_state("preds", [], dist_reduce_fx="cat", persistent=True)
        self.add_state("target", [], dist_reduce_fx="cat", persistent=True)
        self.add_state("weights", [], dist_reduce_fx="cat", persistent=True)

    def _update_batch(self, b: Batch) -> None:
        """Add a batch: ``preds`` (n,) scores, ``target`` (n,) in {0, 1}, ``weights`` (n,)."""
        self.preds.append(b.preds)
        self.target.append(b.target)
        self.weights.append(b.weights if b.weights is not None else b.preds.new_empty(0))

    def compute(self) -> Tensor:
        """AUPRC, 0-d float64 (NaN without a positive)."""
        empty = torch.zeros(0, device=self.device)
        preds = self._cat(self.preds, empty)
        return auprc(
            preds, self._cat(self.target, empty), aligned_weights(self.preds, self.weights)
        ).to(self.device)


def _rank_within_session(values: np.ndarray, session: np.ndarray) -> np.ndarray:
    """Per sample, how many samples of its session have a strictly larger value."""
    n = values.size
    order = np.lexsort((-values, session))
    v, s = values[order], session[order]
    new_session = np.concatenate(([True], s[1:] != s[:-1]))
    new_value = new_session | np.concatenate(([True], v[1:] != v[:-1]))
    idx = np.arange(n)
    session_start = np.maximum.accumulate(np.where(new_session, idx, 0))
    value_start = np.maximum.accumulate(np.where(new_value, idx, 0))
    ranks = np.empty(n, dtype=np.int64)
    ranks[order] = value_start - session_start
    return ranks


class RecallSession(RankMetric):
    """Session-level recall@k (torchrec's ``RecallSessionMetric``).

    Within every session (the grouping key) of a batch, a sample is predicted positive
    when fewer than ``top_k`` samples of its session score strictly higher. With
    ``rank_labels`` (torchrec's ``run_ranking_of_labels``) the labels are ranked the same
    way and the top ``top_k`` labels of a session are the positives; otherwise labels are
    0/1. Recall = ``sum w [positive, predicted positive] / sum w [positive]``, summed over
    batches (sessions are taken per batch, as torchrec does). NaN without a positive.

    >>> m = RecallSession(grouping_key="session", top_k=1)
    >>> m.update(torch.tensor([0.9, 0.1, 0.2, 0.8]), torch.tensor([1.0, 0.0, 1.0, 0.0]),
    ...          grouping_key=torch.tensor([7, 7, 8, 8]))
    >>> m.compute().item()
    0.5
    """

    supports_weights = True
    needs_grouping_key = True
    label_kind = "real"

    # states (registered by add_state in __init__)
    true_pos: Tensor
    false_neg: Tensor

    def __init__(
        self, grouping_key: str = "", top_k: int = 5, rank_labels: bool = False, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        if top_k < 1:
            raise ValueError(f"RecallSession: top_k must be >= 1, got {top_k}")
        self.grouping_key_name = grouping_key
        self.top_k = int(top_k)
        self.rank_labels = bool(rank_labels)
        self.add_state("true_pos", _zero(), dist_reduce_fx="sum", persistent=True)
        self.add_state("false_neg", _zero(), dist_reduce_fx="sum", persistent=True)

    def _validate(self, preds: Any, target: Any, weights: Any, grouping_key: Any) -> Any:
        b = super()._validate(preds, target, weights, grouping_key)
        if not self.rank_labels and b.size and not bool(((b.target == 0) | (b.target == 1)).all()):
            raise ValueError("RecallSession: labels must be 0 or 1 (or set rank_labels)")
        return b

    def _update_batch(self, b: Batch) -> None:
        """Add a batch: ``preds`` (n,), ``target`` (n,) (0/1, or gains with
        ``rank_labels``), ``grouping_key`` (n,) session ids, ``weights`` (n,)."""
        assert b.keys is not None  # needs_grouping_key: validated
        sess = to_numpy(b.keys.cpu())
        pred_pos = _rank_within_session(to_numpy(b.preds.cpu()), sess) < self.top_k
        y = to_numpy(b.target.cpu()).astype(np.float64)
        if self.rank_labels:
            y = (_rank_within_session(y, sess) < self.top_k).astype(np.float64)
        w = np.ones_like(y) if b.weights is None else to_numpy(b.weights.cpu()).astype(np.float64)
        wy = w * y
        self.true_pos += float(wy[pred_pos].sum())
        self.false_neg += float(wy[~pred_pos].sum())

    def compute(self) -> Tensor:
        """Session recall, 0-d float64 (NaN without a positive)."""
        d = self.true_pos + self.false_neg
        return torch.where(d > 0, self.true_pos / torch.where(d > 0, d, 1.0), math.nan)
