"""Binary AUC and one-vs-rest multiclass AUC, binned or exact."""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric

from rankboard.service.metrics.base import RankMetric
from rankboard.service.metrics.functional._validation import Batch
from rankboard.service.metrics.functional.auc import (
    exact_auc,
    exact_multiclass_auc,
    multiclass_auc_from_histogram,
    multiclass_histogram,
)
from rankboard.service.metrics.functional.histogram import (
    add_binned_counts,
    add_threshold_counts,
    auc_from_histogram,
    auc_from_threshold_histogram,
    check_binning,
)

__all__ = ["AUC", "MulticlassAUC"]

log = logging.getLogger(__name__)

# A binned state saved before threshold points existed has no "points" entry: its
# histogram is over equal-width bins, and the metric keeps that meaning when it loads it.
_POINTS_STATE = "points"


def _binning(what: str, thresholds: int | None, bins: int) -> tuple[int, int]:
    """``(threshold points, equal-width bins)``; ``thresholds=None``: 200 unless ``bins``."""
    if thresholds is None:
        thresholds = 0 if bins else 200
    return check_binning(thresholds, bins, what)


def _add_states(metric: Any, hist: Tensor, exact: tuple[str, ...]) -> None:
    """Register a binned AUC's histogram (initial ``hist``) and points flag, or, exact, the
    list states ``exact`` of the kept samples."""
    if metric.num_buckets:
        metric.add_state("hist", hist, dist_reduce_fx="sum", persistent=True)
        flag = torch.tensor(1 if metric.thresholds else 0)
        metric.add_state(_POINTS_STATE, flag, dist_reduce_fx="max", persistent=True)
    else:
        for name in exact:
            metric.add_state(name, [], dist_reduce_fx="cat", persistent=True)


class _Binned:
    """Mixin: the binning mode of a binned AUC and the legacy-state switch on load."""

    thresholds: int
    bins: int

    @property
    def num_buckets(self) -> int:
        """Buckets of the histogram: ``thresholds`` points or ``bins`` bins (0: exact)."""
        return self.thresholds or self.bins

    def _legacy_switch(self, state_dict: dict, prefix: str) -> None:
        if (
            self.thresholds
            and prefix + "hist" in state_dict
            and prefix + _POINTS_STATE not in state_dict
        ):
            log.warning(
                "%s state saved before threshold points: it keeps %d equal-width bins "
                "(declare 'bins: %d' to say so; 'thresholds' now means threshold points)",
                type(self).__name__,
                self.thresholds,
                self.thresholds,
            )
            self.bins, self.thresholds = self.thresholds, 0
            self.points.fill_(0)  # type: ignore[attr-defined]


class AUC(_Binned, RankMetric):
    """Binary AUC, optionally weighted.

    ``thresholds > 0`` (default 200; tzrec's and torchmetrics' meaning): ``thresholds``
    threshold points ``linspace(0, 1, thresholds)``; the value is torchmetrics'
    ``BinaryAUROC(thresholds=...)`` (trapezoid over the ROC points ``p >= point``), filled
    by one ``O(n)`` bucketize-and-count pass
    (:func:`~rankboard.service.metrics.functional.auc.bin_indices`).

    ``bins > 0`` (rankboard's own, instead of ``thresholds``): a histogram over ``bins``
    equal-width bins on [0, 1] (``clamp(floor(p * bins), 0, bins - 1)``); pairs in one
    bin count one half.

    Binned modes need probabilities in [0, 1]; state ``2 x T`` float64, ``T`` at most
    100,000.

    ``thresholds == 0``: exact, ties count one half (sklearn's ``roc_auc_score``); keeps
    every sample (float32 preds, targets and weights) and sorts at compute.

    ``compute()`` is NaN until both classes have been seen.

    >>> m = AUC(thresholds=0)
    >>> m.update(torch.tensor([0.1, 0.4]), torch.tensor([0, 1]))
    >>> m.update(torch.tensor([0.4, 0.8]), torch.tensor([0, 1]))
    >>> m.compute().item()
    0.875
    >>> binned = AUC(bins=10)
    >>> binned.update(torch.tensor([0.1, 0.45, 0.4, 0.8]), torch.tensor([0, 0, 1, 1]))
    >>> binned.compute().item()
    0.875
    >>> points = AUC(thresholds=11)  # points 0, 0.1, ..., 1: 0.45 and 0.4 share a bucket
    >>> points.update(torch.tensor([0.1, 0.45, 0.4, 0.8]), torch.tensor([0, 0, 1, 1]))
    >>> points.compute().item()
    0.875
    """

    supports_weights = True
    label_kind = "binary"

    # states (registered by add_state in __init__)
    hist: Tensor
    points: Tensor
    preds: list[Tensor]
    target: list[Tensor]
    weights: list[Tensor]

    def __init__(self, thresholds: int | None = None, bins: int = 0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.thresholds, self.bins = _binning(type(self).__name__, thresholds, bins)
        self.prob_preds = self.num_buckets > 0
        hist = torch.zeros(2 * self.num_buckets, dtype=torch.float64)
        _add_states(self, hist, exact=("preds", "target", "weights"))

    def _update_batch(self, b: Batch) -> None:
        """Add a batch: ``preds`` (n,) scores, ``target`` (n,) in {0, 1}, ``weights`` (n,)."""
        if self.num_buckets:
            self._add_histogram(b)
        else:
            self.preds.append(b.preds)
            self.target.append(b.target)
            # an empty chunk stands for unit weights: unweighted streams keep no weights
            self.weights.append(b.weights if b.weights is not None else b.preds.new_empty(0))

    def _add_histogram(self, b: Batch, hist: Tensor | None = None) -> None:
        h = self.hist if hist is None else hist
        if self.thresholds:
            add_threshold_counts(h, b.preds, b.target, self.thresholds, b.weights)
        else:
            add_binned_counts(h, b.preds, b.target, self.bins, b.weights)

    def _auc_of(self, hist: Tensor) -> Tensor:
        if self.thresholds:
            return auc_from_threshold_histogram(hist)
        return auc_from_histogram(hist)

    def _upgrade_state(self, state: dict[str, Any], prefix: str) -> None:
        self._legacy_switch(state, prefix)

    def compute(self) -> Tensor:
        """The AUC as a 0-d float64 tensor (NaN without positives or negatives)."""
        if self.num_buckets:
            return self._auc_of(self.hist)
        empty = torch.zeros(0, device=self.device)
        preds = self._cat(self.preds, empty)
        return exact_auc(preds, self._cat(self.target, empty), self._weights(preds))

    def _weights(self, preds: Tensor) -> Tensor | None:
        """The weights of all samples, None when every chunk is unweighted."""
        chunks = [self.weights] if isinstance(self.weights, Tensor) else self.weights
        given = sum(int(w.numel()) for w in chunks)
        if given == 0:
            return None
        if given == preds.numel():
            return torch.cat(chunks) if len(chunks) > 1 else chunks[0]
        pred_chunks = [self.preds] if isinstance(self.preds, Tensor) else self.preds
        sizes = [int(p.numel()) for p in pred_chunks]
        return torch.cat(
            [
                w if w.numel() else torch.ones(n, dtype=torch.float32, device=preds.device)
                for w, n in zip(chunks, sizes, strict=True)
            ]
        )


class MulticlassAUC(_Binned, RankMetric):
    """One-vs-rest AUC of ``(n, C)`` class probabilities against integer class ids.

    ``average``: ``"macro"`` (mean over classes whose AUC is defined) or ``"weighted"``
    (weighted by class support). ``thresholds > 0`` (threshold points) or ``bins > 0``
    (equal-width) bin like :class:`AUC` (state ``C x 2 x T`` counts, sized at the first
    update; ``T`` at most 100,000); 0 is exact and keeps the samples. The number of
    classes is fixed by the first batch; a batch with another number of columns is
    refused.

    >>> m = MulticlassAUC(thresholds=0)
    >>> p = torch.tensor([[0.7, 0.2, 0.1], [0.2, 0.5, 0.3], [0.1, 0.3, 0.6], [0.4, 0.4, 0.2]])
    >>> m.update(p, torch.tensor([0, 1, 2, 1]))
    >>> m.compute().item()
    1.0
    """

    label_kind = "multiclass"
    multiclass_preds = True

    # states (registered by add_state in __init__)
    num_classes: Tensor
    hist: Tensor
    points: Tensor
    preds: list[Tensor]
    target: list[Tensor]

    def __init__(
        self, thresholds: int | None = None, average: str = "macro", bins: int = 0, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        if average not in ("macro", "weighted"):
            raise ValueError(
                f"MulticlassAUC: average must be 'macro' or 'weighted', got {average!r}"
            )
        self.thresholds, self.bins = _binning("MulticlassAUC", thresholds, bins)
        self.average = average
        self.prob_preds = self.num_buckets > 0
        self.add_state("num_classes", torch.tensor(0), dist_reduce_fx="max", persistent=True)
        _add_states(self, torch.zeros(0, dtype=torch.float64), exact=("preds", "target"))

    def _validate(self, preds: Any, target: Any, weights: Any, grouping_key: Any) -> Batch:
        b = super()._validate(preds, target, weights, grouping_key)
        c = int(self.num_classes)
        if c and b.size and b.preds.shape[1] != c:
            raise ValueError(
                f"MulticlassAUC: preds have {b.preds.shape[1]} classes, earlier batches had {c}"
            )
        return b

    def _update_batch(self, b: Batch) -> None:
        """Add a batch: ``preds`` (n, C) probabilities, ``target`` (n,) ids in [0, C)."""
        c = b.preds.shape[1]
        self.num_classes.fill_(c)  # in place: no host-to-device copy (a sync on CUDA)
        if self.num_buckets:
            h = multiclass_histogram(
                b.preds, b.target, self.num_buckets, points=self.thresholds > 0
            ).reshape(-1)
            self.hist = h if self.hist.numel() == 0 else self.hist + h
        else:
            self.preds.append(b.preds)
            self.target.append(b.target)

    def _upgrade_state(self, state: dict[str, Any], prefix: str) -> None:
        self._legacy_switch(state, prefix)

    def merge_state(self, incoming_state: dict[str, Any] | Metric) -> None:
        """torchmetrics' ``merge_state``; a histogram not sized yet (no batch seen) takes
        the other side's size."""
        if isinstance(incoming_state, MulticlassAUC):
            incoming_state = incoming_state.metric_state
        if isinstance(incoming_state, dict) and self.num_buckets:
            inc = incoming_state["hist"]
            if inc.numel() == 0:
                incoming_state = {**incoming_state, "hist": torch.zeros_like(self.hist)}
            elif self.hist.numel() == 0:
                self.hist = torch.zeros_like(inc)
        super().merge_state(incoming_state)

    def compute(self) -> Tensor:
        """The averaged one-vs-rest AUC, 0-d float64 (NaN when no class is defined)."""
        c = int(self.num_classes)
        if c == 0:
            return torch.tensor(float("nan"), dtype=torch.float64, device=self.device)
        if self.num_buckets:
            return multiclass_auc_from_histogram(
                self.hist.reshape(c, -1), self.average, points=self.thresholds > 0
            )
        preds = self._cat(self.preds, torch.zeros(0, c, device=self.device))
        target = self._cat(self.target, torch.zeros(0, dtype=torch.int64, device=self.device))
        return exact_multiclass_auc(preds, target, self.average)
