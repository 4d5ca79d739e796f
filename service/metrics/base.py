"""The base class shared by every rankboard metric.

A :class:`RankMetric` is a torchmetrics ``Metric`` whose states are all registered with
``add_state(..., persistent=True)``: ``state_dict()`` / ``load_state_dict()`` round-trip
them (list states included), ``merge_state`` combines two instances and ``.to(device)``
moves them. On top of torchmetrics it fixes the calling convention the service relies on:

* ``update(preds, target, *, weights=None, grouping_key=None)``;
* ``check_inputs(...)`` runs exactly the validation ``update`` runs, touching no state;
* class attributes ``supports_weights``, ``needs_grouping_key`` and ``label_kind``
  (``"binary"``, ``"multiclass"`` or ``"real"``) tell a caller what to pass;
* an empty batch is a valid no-op;
* ``compute()`` returns a 0-d float64 tensor, NaN where the metric is undefined, and
  leaves the state untouched.

State follows its inputs: the first update after construction or ``reset()`` moves the
metric to the inputs' device; later inputs are moved to the metric's device.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any, ClassVar

import torch
from torch import Tensor
from torchmetrics import Metric

from rankboard.service.metrics.functional._validation import Batch, LabelKind, validate_batch

__all__ = ["RankMetric"]

log = logging.getLogger(__name__)


class RankMetric(Metric):
    """Base class: validation, device following and persistence for all metrics."""

    supports_weights: ClassVar[bool] = False
    needs_grouping_key: ClassVar[bool] = False
    label_kind: ClassVar[LabelKind] = "binary"
    multiclass_preds: ClassVar[bool] = False
    allow_multihot_target: ClassVar[bool] = False
    prob_preds: ClassVar[bool] = False

    is_differentiable = False
    higher_is_better: bool | None = True
    full_state_update = False

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)

    def _validate(
        self,
        preds: Any,
        target: Any,
        weights: Any | None,
        grouping_key: Any | None,
    ) -> Batch:
        return validate_batch(
            preds,
            target,
            label_kind=self.label_kind,
            weights=weights,
            grouping_key=grouping_key,
            supports_weights=self.supports_weights,
            needs_grouping_key=self.needs_grouping_key,
            multiclass_preds=self.multiclass_preds,
            allow_multihot_target=self.allow_multihot_target,
            prob_preds=self.prob_preds,
            metric_name=type(self).__name__,
        )

    def check_inputs(
        self,
        preds: Any,
        target: Any,
        *,
        weights: Any | None = None,
        grouping_key: Any | None = None,
    ) -> None:
        """Raise ``ValueError`` if ``update`` would refuse this batch; changes nothing."""
        self._validate(preds, target, weights, grouping_key)

    def _prepare(
        self,
        preds: Any,
        target: Any,
        weights: Any | None,
        grouping_key: Any | None,
    ) -> Batch | None:
        """Validate, follow the device, and return the batch (None when it is empty)."""
        b = self._validate(preds, target, weights, grouping_key)
        if b.size == 0:
            return None
        dev = b.preds.device
        if dev != self.device:
            if self._update_count <= 1:
                self.to(dev)
            else:
                b = Batch(*(None if x is None else x.to(self.device) for x in b))
        return b

    def _wrap_update(self, update: Callable) -> Callable:
        """torchmetrics' bookkeeping without ``nn.Module.__setattr__`` on the hot path;
        returns what ``update`` returns (the train wrapper reports decay steps)."""

        @functools.wraps(update)
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            d = self.__dict__
            d["_computed"] = None
            d["_update_count"] = d["_update_count"] + 1
            with torch.no_grad():
                return update(*args, **kwargs)

        return wrapped

    def state_snapshot(self) -> dict[str, Any]:
        """``state_dict()``'s content without copying retained samples.

        List (cat) states come back as new lists of the same chunk tensor objects (a
        checkpoint writes each chunk once, by identity): chunks are
        only ever appended, never changed in place, so later updates cannot alter the
        snapshot. Tensor states are cloned (they are updated in place). Cheap enough to
        take under a lock, while ``state_dict()`` deep-copies every sample.

        >>> from rankboard.service.metrics import AUC
        >>> m = AUC(thresholds=0)
        >>> m.update(torch.tensor([0.1, 0.8]), torch.tensor([0, 1]))
        >>> snap = m.state_snapshot()
        >>> sorted(snap) == sorted(m.state_dict())
        True
        >>> snap["preds"][0] is m.preds[0]  # shared, not copied
        True
        """
        out: dict[str, Any] = {}
        for name, module in self.named_modules():
            if not isinstance(module, Metric):
                continue
            prefix = f"{name}." if name else ""
            for key in module._defaults:
                if not module._persistent[key]:
                    continue
                value = getattr(module, key)
                out[prefix + key] = (
                    list(value) if isinstance(value, list) else value.detach().clone()
                )
        return out

    def compute_interval(
        self, alpha: float = 0.05, cluster_key: str | None = None
    ) -> tuple[float, float, float] | None:
        """``(value, low, high)``: the value and its ``1 - alpha`` interval from the
        samples this metric retains (:mod:`rankboard.service.metrics.stats`); None when
        no standard error can be estimated (e.g. fewer than two units).

        ``cluster_key``: a grouped metric's own grouping key (its groups are always the
        units); other metrics keep no key column, so only None. Metrics that keep only
        sums (NE, MSE, MAE, accuracy, ...) raise ``ValueError``: use
        ``rankboard.service.metrics.stats.arm_stats`` with the samples, or the service.

        >>> from rankboard.service.metrics import AUC
        >>> m = AUC(thresholds=0)
        >>> p = torch.tensor([0.1, 0.4, 0.35, 0.8, 0.3, 0.7])
        >>> m.update(p, torch.tensor([0, 0, 1, 1, 0, 1]))
        >>> [round(x, 4) for x in m.compute_interval()]
        [0.8889, 0.5809, 1.1969]
        """
        from rankboard.service.metrics import stats

        cols = stats.columns_from_metric(self)
        s = stats.arm_stats(self, cols, name=type(self).__name__, cluster=cluster_key)
        iv = stats.interval(s, alpha=alpha)
        return None if iv is None else (s.value, iv[0], iv[1])

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args: Any) -> None:
        super()._load_from_state_dict(state_dict, prefix, *args)
        # a loaded metric counts as updated: no "compute before update" warning
        self._update_count = max(self._update_count, 1)
        self._computed = None

    @staticmethod
    def _cat(state: list[Tensor] | Tensor, like: Tensor) -> Tensor:
        """Concatenate a list (cat) state; an empty list gives an empty tensor like ``like``."""
        if isinstance(state, Tensor):
            return state
        if not state:
            return like
        return torch.cat(state) if len(state) > 1 else state[0]
