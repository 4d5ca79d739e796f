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
  leaves the state untouched; it is not cached (``compute_with_cache`` is off: states
  also change outside ``update``, by ``load_state_dict``, a decay step or a rollback);
* what the service needs of a metric is public and built on torchmetrics' public API
  (``metric_state``, ``add_state``, ``load_state_dict``, ``named_modules``): a cheap copy
  to compute on (:meth:`RankMetric.state_copy`), the bytes of retained samples
  (:meth:`RankMetric.memory_bytes`), a snapshot of the states
  (:meth:`RankMetric.state_snapshot`). No private attribute of torchmetrics is read or
  overridden, so a torchmetrics upgrade cannot silently break state saving.

A subclass registers its states with ``add_state`` and implements ``_update_batch(b)``
(the validated, non-empty :class:`Batch`, on the metric's device) and ``compute()``;
``update`` (validation, empty batches, device following) is written once, here.

State follows its inputs: the first update after construction or ``reset()`` moves the
metric to the inputs' device; later inputs are moved to the metric's device.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterator, Mapping
from typing import Any, ClassVar

import torch
from torch import Tensor
from torchmetrics import Metric

from rankboard.service.metrics.functional._validation import Batch, LabelKind, validate_batch

__all__ = ["RankMetric"]

log = logging.getLogger(__name__)


class RankMetric(Metric):
    """Base class: validation, device following and persistence for all metrics."""

    # what a caller passes; class attributes (wrappers and binned AUCs set them per instance)
    supports_weights: bool = False
    needs_grouping_key: bool = False
    label_kind: LabelKind = "binary"
    multiclass_preds: bool = False
    allow_multihot_target: bool = False
    prob_preds: bool = False

    is_differentiable = False
    higher_is_better: bool | None = True
    full_state_update = False

    def __init__(self, **kwargs: Any) -> None:
        if kwargs.get("compute_with_cache"):
            raise ValueError(
                f"{type(self).__name__}: compute_with_cache is not supported (states also "
                "change outside update: load_state_dict, decay steps, rollbacks)"
            )
        kwargs["compute_with_cache"] = False
        super().__init__(**kwargs)
        # True once the state lives on a device chosen by data or a loaded state: the
        # first non-empty update after construction or reset() moves the metric there.
        # It also counts as "updated" (a loaded state, or update_batch, which does not go
        # through torchmetrics' update wrapper)
        self._placed = False

    def add_state(
        self,
        name: str,
        default: list | Tensor,
        dist_reduce_fx: str | Any | None = None,
        persistent: bool = True,
    ) -> None:
        """torchmetrics' ``add_state``; every rankboard state is persistent (it is saved,
        snapshotted and merged), so ``persistent=False`` is refused."""
        if not persistent:
            raise ValueError(f"{type(self).__name__}: state {name!r} must be persistent")
        super().add_state(name, default, dist_reduce_fx=dist_reduce_fx, persistent=True)

    @property
    def update_called(self) -> bool:
        """Whether the metric was updated (or loaded from a state) since construction or
        ``reset()``."""
        return self._placed or super().update_called

    def _validate(self, preds: Any, target: Any, weights: Any, grouping_key: Any) -> Batch:
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
        self, preds: Any, target: Any, *, weights: Any = None, grouping_key: Any = None
    ) -> Batch:
        """Raise ``ValueError`` if ``update`` would refuse this batch; changes nothing.

        Returns the validated batch (compact dtypes), which :meth:`update_batch` adds
        without checking it again: validate once, apply later.
        """
        return self._validate(preds, target, weights, grouping_key)

    def update_batch(self, batch: Batch) -> None:
        """Add a batch returned by this metric's :meth:`check_inputs`, not checked again
        (the service validates each batch once, when it checks it against the state).
        The same effect as ``update`` with the original inputs; a batch validated by a
        metric of another kind may break this one's rules, so do not mix them.

        >>> from rankboard.service.metrics import AUC
        >>> m = AUC(thresholds=0)
        >>> b = m.check_inputs(torch.tensor([0.1, 0.8]), torch.tensor([0, 1]))
        >>> m.update_batch(b)
        >>> m.compute().item()
        1.0
        """
        b = self._placed_batch(batch)
        if b is not None:
            self._update_batch(b)

    def update(
        self, preds: Any, target: Any, *, weights: Any = None, grouping_key: Any = None
    ) -> None:
        """Add a batch: ``preds`` and ``target`` with ``n`` rows, optional ``weights``
        ``(n,)`` >= 0 where supported and ``grouping_key`` ``(n,)`` integer ids where
        needed (see the class for shapes and values). Refused (``ValueError``) before any
        state changes; an empty batch is a no-op."""
        b = self._prepare(preds, target, weights, grouping_key)
        if b is not None:
            self._update_batch(b)

    def _update_batch(self, b: Batch) -> None:
        """Add a validated, non-empty batch (on the metric's device) to the states."""
        raise NotImplementedError(f"{type(self).__name__} does not implement _update_batch")

    def _prepare(self, preds: Any, target: Any, weights: Any, grouping_key: Any) -> Batch | None:
        """Validate, follow the device, and return the batch (None when it is empty)."""
        return self._placed_batch(self._validate(preds, target, weights, grouping_key))

    def _placed_batch(self, b: Batch) -> Batch | None:
        """``b`` on the metric's device (the first non-empty batch since construction or
        reset moves the metric to it); None when it is empty."""
        if b.size == 0:
            return None
        dev = b.preds.device
        if dev != self.device:
            if not self._placed:
                self.to(dev)
            else:
                to = self.device
                b = Batch(
                    b.preds.to(to),
                    b.target.to(to),
                    None if b.weights is None else b.weights.to(to),
                    None if b.keys is None else b.keys.to(to),
                )
        if not self._placed:
            self._placed = True
        return b

    def reset(self) -> None:
        """Reset the states to their defaults (torchmetrics' ``reset``)."""
        super().reset()
        self._placed = False

    def _rank_modules(self) -> Iterator[tuple[str, RankMetric]]:
        """``(state key prefix, metric)`` for this metric and every metric it wraps."""
        for name, module in self.named_modules():
            if isinstance(module, RankMetric):
                yield (f"{name}." if name else ""), module

    def __hash__(self) -> int:
        """Identity hash. torchmetrics hashes every state value (each retained chunk of a
        list state), and ``nn.Module.named_modules`` hashes each module it visits, so every
        walk over a metric cost O(chunks held): ingestion slowed as a run grew (672 ->
        130 batches/s over 3,000 batches). torchmetrics' hash includes ``id(self)``
        anyway, so equal hashes already meant the same object."""
        return object.__hash__(self)

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
        for prefix, module in self._rank_modules():
            for key, value in module.metric_state.items():
                out[prefix + key] = (
                    list(value) if isinstance(value, list) else value.detach().clone()
                )
        return out

    def state_copy(self) -> RankMetric:
        """A copy of this metric whose states can be computed on (or updated) independently.

        Retained sample chunks are shared with the original (they are only ever appended
        to, never changed in place), everything else is deep-copied: cheap enough to take
        under a lock and compute on outside it. A sampling metric's random generator is
        shared too, so successive computes keep drawing new pairs.

        >>> from rankboard.service.metrics import AUC
        >>> m = AUC(thresholds=0)
        >>> m.update(torch.tensor([0.1, 0.8]), torch.tensor([0, 1]))
        >>> c = m.state_copy()
        >>> m.update(torch.tensor([0.9]), torch.tensor([0]))
        >>> c.compute().item(), m.compute().item()
        (1.0, 0.5)
        >>> c.preds[0] is m.preds[0]
        True
        """
        if next(self.children(), None) is None:
            # a shallow copy (torchmetrics' __getstate__/__setstate__ bind the copy's own
            # update and compute) with its own state objects: ~20x cheaper than deepcopy
            new = copy.copy(self)
            for name, value in self.metric_state.items():
                setattr(new, name, list(value) if isinstance(value, list) else value.clone())
            return new
        # wrapped metrics (registered submodules) need their own copies: a deep copy
        # that reuses the sample chunks
        memo: dict[int, Any] = {}
        for _, module in self._rank_modules():
            for value in module.metric_state.values():
                if isinstance(value, list):
                    for chunk in value:
                        memo[id(chunk)] = chunk
        return copy.deepcopy(self, memo)

    def memory_bytes(self) -> int:
        """Bytes of the samples this metric retains (its list states, wrapped metrics
        included): what grows with the stream. Fixed-size states are not counted.

        >>> from rankboard.service.metrics import AUC
        >>> m = AUC(thresholds=0)
        >>> m.update(torch.rand(10), torch.randint(0, 2, (10,)))
        >>> m.memory_bytes()  # float32 prediction + float32 label per sample
        80
        """
        total = 0
        for _, module in self._rank_modules():
            for value in module.metric_state.values():
                if isinstance(value, list):
                    total += sum(t.numel() * t.element_size() for t in value)
        return total

    # list states are only appended to between a mark and its undo, except in metrics
    # that drop or reset samples themselves (they keep whole chunk lists instead)
    _undo_keeps_lists: ClassVar[bool] = False

    def undo_mark(self) -> dict[tuple[str, str], Any]:
        """What :meth:`undo` needs to put the states back as they are now: per state of
        this metric and those it wraps, a list state's length (appended chunks are cut
        off again) and a clone of a tensor state. O(states), not O(samples held).

        >>> from rankboard.service.metrics import AUC
        >>> m = AUC(thresholds=0)
        >>> m.update(torch.tensor([0.1, 0.8]), torch.tensor([0, 1]))
        >>> mark = m.undo_mark()
        >>> m.update(torch.tensor([0.9]), torch.tensor([0]))
        >>> m.undo(mark)
        >>> len(m.preds), m.compute().item()
        (1, 1.0)
        """
        keep = self._undo_keeps_lists
        out: dict[tuple[str, str], Any] = {}
        for prefix, module in self._rank_modules():
            for key, value in module.metric_state.items():
                if isinstance(value, list):
                    out[(prefix, key)] = list(value) if keep else len(value)
                else:
                    out[(prefix, key)] = value.detach().clone()
        return out

    def undo(self, mark: dict[tuple[str, str], Any]) -> None:
        """Put the states back to what :meth:`undo_mark` recorded (once per mark)."""
        modules = dict(self._rank_modules())
        for (prefix, key), saved in mark.items():
            module = modules[prefix]
            if isinstance(saved, int):
                del getattr(module, key)[saved:]
            else:
                setattr(module, key, saved)
        for module in modules.values():
            module._after_load()

    def load_state_dict(
        self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False
    ) -> Any:
        """torchmetrics' ``load_state_dict``, after each metric (this one and those it
        wraps) has upgraded what older versions saved (:meth:`_upgrade_state`); the
        loaded metric counts as updated and stays on its device."""
        state = dict(state_dict)
        modules = list(self._rank_modules())
        for prefix, module in modules:
            module._upgrade_state(state, prefix)
        out = super().load_state_dict(state, strict=strict, assign=assign)
        for _, module in modules:
            module._placed = True
            module._after_load()
        return out

    def _upgrade_state(self, state: dict[str, Any], prefix: str) -> None:
        """Rewrite, in place, the entries of ``state`` under ``prefix`` that an older
        version saved differently (subclasses; nothing by default)."""

    def _after_load(self) -> None:
        """Refresh what derives from the states after a load (subclasses)."""

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

    @staticmethod
    def _cat(state: list[Tensor] | Tensor, like: Tensor) -> Tensor:
        """Concatenate a list (cat) state; an empty list gives an empty tensor like ``like``."""
        if isinstance(state, Tensor):
            return state
        if not state:
            return like
        return torch.cat(state) if len(state) > 1 else state[0]
