"""Training-time metrics, smoothed over time as in the reference (tzrec).

:class:`DecayAUC` keeps two binned confusion histograms: updates fill the *buffer*, and
:meth:`DecayAUC.decay` folds it into the main state
(``state = decay * state + (1 - decay) * buffer``, or the buffer itself while the state
is still empty) and clears it. :class:`TrainMetricWrapper` calls that every
``decay_step``-th update; for any other metric it computes the metric over the last
``decay_step`` updates, resets it and smooths the value
(``value = decay * value + (1 - decay) * new``, the first value taken as is).
"""

from __future__ import annotations

import logging
import math
from typing import Any

import torch
from torch import Tensor

from rankboard.service.metrics.auc import AUC
from rankboard.service.metrics.base import RankMetric
from rankboard.service.metrics.functional._validation import Batch

__all__ = ["DecayAUC", "TrainMetricWrapper"]

log = logging.getLogger(__name__)


class DecayAUC(AUC):
    """Binned AUC whose state decays: updates go to a buffer, :meth:`decay` folds it in.

    ``compute()`` is the AUC of the (decayed) main state: NaN before the first decay.

    ``thresholds`` are threshold points as in tzrec's ``DecayAUC`` (torchmetrics'
    meaning), ``bins`` equal-width bins (see :class:`AUC`). tzrec's DecayAUC reads 0.0
    before its first decay; rankboard reads NaN (no value yet, not a bad model).

    >>> m = DecayAUC(bins=10)
    >>> m.update(torch.tensor([0.1, 0.45, 0.4, 0.8]), torch.tensor([0, 0, 1, 1]))
    >>> m.compute().isnan().item()
    True
    >>> m.decay(0.9)
    >>> m.compute().item()
    0.875
    """

    # states (registered by add_state in __init__)
    buffer: Tensor

    def __init__(self, thresholds: int | None = None, bins: int = 0, **kwargs: Any) -> None:
        if thresholds is not None and thresholds < 1 and bins < 1:
            raise ValueError(
                f"DecayAUC needs binned thresholds >= 2 (or bins >= 1), got {thresholds}"
            )
        super().__init__(thresholds=thresholds, bins=bins, **kwargs)
        zeros = torch.zeros(2 * self.num_buckets, dtype=torch.float64)
        self.add_state("buffer", zeros, dist_reduce_fx="sum", persistent=True)

    def _update_batch(self, b: Batch) -> None:
        """Add a batch to the buffer (see :class:`AUC` for the inputs)."""
        self._add_histogram(b, self.buffer)

    def decay(self, decay: float) -> None:
        """Fold the buffer into the state and clear it."""
        empty = not bool(self.hist.any())
        self.hist = self.buffer.clone() if empty else decay * self.hist + (1 - decay) * self.buffer
        self.buffer = torch.zeros_like(self.buffer)

    def compute(self) -> Tensor:
        """AUC of the decayed state, 0-d float64."""
        return self._auc_of(self.hist)


class TrainMetricWrapper(RankMetric):
    """Smooths a metric over training steps; :attr:`refreshed` says whether the last
    ``update`` was a decay step.

    Every ``decay_step``-th non-empty update the value is refreshed: for a
    :class:`DecayAUC` the confusion state decays and the value is its AUC; otherwise the
    wrapped metric is computed, reset, and ``value = decay_rate * value +
    (1 - decay_rate) * new`` (the first value is taken as is; a NaN window, e.g. one
    without positives, leaves the value unchanged). ``compute()`` is NaN before the first
    decay step. The value and counters are persistent states, so ``state_dict`` round-trips
    the whole wrapper (the wrapped metric's states are under ``metric.``).

    >>> w = TrainMetricWrapper(DecayAUC(bins=10), decay_rate=0.9, decay_step=2)
    >>> w.update(torch.tensor([0.1, 0.8]), torch.tensor([0, 1]))
    >>> w.refreshed
    False
    >>> w.update(torch.tensor([0.45, 0.4]), torch.tensor([0, 1]))
    >>> w.refreshed
    True
    >>> w.compute().item(), w.num_updates
    (0.875, 2)
    """

    full_state_update = True  # the smoothed value cannot be merged
    _undo_keeps_lists = True  # a refresh resets the wrapped metric (at most decay_step chunks)

    # states (registered by add_state in __init__)
    value: Tensor
    steps: Tensor
    decays: Tensor
    metric: RankMetric

    def __init__(
        self, metric: RankMetric, decay_rate: float = 0.9, decay_step: int = 100, **kwargs: Any
    ) -> None:
        if decay_step < 1:
            raise ValueError(f"TrainMetricWrapper: decay_step must be >= 1, got {decay_step}")
        if not 0 <= decay_rate <= 1:
            raise ValueError(f"TrainMetricWrapper: decay_rate must be in [0, 1], got {decay_rate}")
        self._last_decayed = False
        self._host_steps = 0  # mirrors ``steps``: no device sync to test for a decay step
        super().__init__(**kwargs)
        self.metric = metric
        self.decay_rate = float(decay_rate)
        self.decay_step = int(decay_step)
        self.supports_weights = metric.supports_weights
        self.needs_grouping_key = metric.needs_grouping_key
        self.label_kind = metric.label_kind
        if hasattr(metric, "grouping_key_name"):
            self.grouping_key_name: str = str(metric.grouping_key_name)
        nan = torch.tensor(math.nan, dtype=torch.float64)
        self.add_state("value", nan, dist_reduce_fx=None, persistent=True)
        self.add_state("steps", torch.tensor(0), dist_reduce_fx=None, persistent=True)
        self.add_state("decays", torch.tensor(0), dist_reduce_fx=None, persistent=True)

    @property
    def refreshed(self) -> bool:
        """Whether the last ``update`` refreshed the value (a decay step)."""
        return self._last_decayed

    @property
    def num_updates(self) -> int:
        """Non-empty updates since construction or reset."""
        return self._host_steps

    def _validate(self, preds: Any, target: Any, weights: Any, grouping_key: Any) -> Batch:
        return self.metric._validate(preds, target, weights, grouping_key)  # the wrapped's

    def update(self, *args: Any, **kwargs: Any) -> None:
        """Update the wrapped metric (its inputs); :attr:`refreshed` tells whether this
        update refreshed the value."""
        self._last_decayed = False
        super().update(*args, **kwargs)

    def update_batch(self, batch: Batch) -> None:
        """:meth:`RankMetric.update_batch`; :attr:`refreshed` as for ``update``."""
        self._last_decayed = False
        super().update_batch(batch)

    def _update_batch(self, b: Batch) -> None:
        # validated by the wrapped metric's rules (raised before any state changed), on
        # this device: the wrapped metric takes it as is
        self.metric.update_batch(b)
        steps = self._host_steps + 1
        self._host_steps = steps
        self.steps.fill_(steps)
        if steps % self.decay_step:
            return
        if isinstance(self.metric, DecayAUC):
            self.metric.decay(self.decay_rate)
            self.value = self.metric.compute().to(torch.float64).clone()
        else:
            new = self.metric.compute().to(torch.float64)
            self.metric.reset()
            if torch.isnan(new):
                log.debug("train metric window is undefined (NaN); value kept")
            elif int(self.decays) == 0 or torch.isnan(self.value):
                self.value = new.clone()
            else:
                self.value = self.decay_rate * self.value + (1 - self.decay_rate) * new
        self.decays += 1
        self._last_decayed = True

    def compute(self) -> Tensor:
        """The smoothed value, 0-d float64 (NaN before the first decay step)."""
        return self.value.clone()

    def reset(self) -> None:
        """Reset the value, the counters and the wrapped metric."""
        super().reset()
        self.metric.reset()
        self._host_steps = 0

    def _after_load(self) -> None:
        self._host_steps = int(self.steps)
