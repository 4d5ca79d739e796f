"""Grouped metrics: the exact AUC / XAUC of every group (e.g. per user), averaged."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from rankboard.service.metrics._weights import aligned_weights, fill_missing_weights
from rankboard.service.metrics.base import RankMetric
from rankboard.service.metrics.functional._validation import Batch
from rankboard.service.metrics.functional.grouped_auc import (
    grouped_auc_from_stats,
    grouped_auc_stats,
)
from rankboard.service.metrics.functional.xauc import (
    grouped_xauc_from_stats,
    grouped_xauc_stats,
    sampled_grouped_xauc,
    weighted_grouped_xauc_from_stats,
    weighted_xauc_stats,
)
from rankboard.service.metrics.xauc import PairSampler

__all__ = ["GroupedAUC", "GroupedXAUC"]


class _GroupedSamples(RankMetric):
    """Keeps float32 preds, targets and weights and int64 group keys as cat states.

    Weights are kept per update chunk, an empty chunk for an unweighted update (see
    :mod:`rankboard.service.metrics._weights`); a state saved before weights existed
    loads as unweighted.
    """

    needs_grouping_key = True
    supports_weights = True

    # states (registered by add_state in __init__)
    preds: list[Tensor]
    target: list[Tensor]
    keys: list[Tensor]
    weights: list[Tensor]

    def __init__(self, grouping_key: str = "", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.grouping_key_name = grouping_key
        self.num_groups: int | None = None
        self.add_state("preds", [], dist_reduce_fx="cat", persistent=True)
        self.add_state("target", [], dist_reduce_fx="cat", persistent=True)
        self.add_state("keys", [], dist_reduce_fx="cat", persistent=True)
        self.add_state("weights", [], dist_reduce_fx="cat", persistent=True)

    def _upgrade_state(self, state: dict[str, Any], prefix: str) -> None:
        if prefix + "preds" in state and prefix + "weights" not in state:
            # saved before weights were kept: every sample unweighted
            state[prefix + "weights"] = fill_missing_weights(state[prefix + "preds"])

    def _update_batch(self, b: Batch) -> None:
        """Add a batch: ``preds`` (n,), ``target`` (n,), ``grouping_key`` (n,) integer ids,
        optional ``weights`` (n,) >= 0."""
        self.preds.append(b.preds)
        self.target.append(b.target)
        assert b.keys is not None  # needs_grouping_key: validated
        self.keys.append(b.keys)
        # an empty chunk stands for unit weights: unweighted streams keep no weights
        self.weights.append(b.weights if b.weights is not None else b.preds.new_empty(0))

    def _samples(self) -> tuple[Tensor, Tensor, Tensor]:
        empty = torch.zeros(0, device=self.device)
        keys = torch.zeros(0, dtype=torch.int64, device=self.device)
        return (
            self._cat(self.preds, empty),
            self._cat(self.target, empty),
            self._cat(self.keys, keys),
        )

    def _sample_weights(self) -> Tensor | None:
        """Weights of all retained samples; None when every update was unweighted."""
        return aligned_weights(self.preds, self.weights)

    def compute_with_count(self) -> tuple[Tensor, Tensor]:
        """``(value, number of groups counted)``: 0-d float64 and 0-d int64 tensors."""
        raise NotImplementedError

    def compute(self) -> Tensor:
        """The averaged value (0-d float64, NaN without a valid group); also sets
        ``num_groups``, the number of groups counted."""
        value, count = self.compute_with_count()
        self.num_groups = int(count)
        return value


class GroupedAUC(_GroupedSamples):
    """Mean exact AUC over the groups that have both classes (ties count one half).

    All groups are computed at once (one sort by (group, prediction), segment
    reductions). Groups with a single class are skipped; ``compute()`` is NaN when no group
    has both. :meth:`compute_with_count` also returns the number of groups counted, and
    ``num_groups`` holds it after ``compute()``.

    With per-sample ``weights`` (torchrec's weighted GAUC) a group's AUC is its weighted
    Mann-Whitney statistic ``sum w_pos w_neg [p_pos > p_neg] / (W_pos W_neg)`` (tied
    pairs one half), and groups count equally in the mean. ``skip_constant_groups``
    (torchrec's convention) also skips groups whose predictions are all equal (their AUC
    is 0.5 by ties; tzrec and rankboard's default count it).

    >>> m = GroupedAUC(grouping_key="user_id")
    >>> m.update(torch.tensor([0.9, 0.1, 0.5, 0.5]), torch.tensor([1, 0, 1, 0]),
    ...          grouping_key=torch.tensor([7, 7, 8, 8]))
    >>> m.update(torch.tensor([0.3]), torch.tensor([1]), grouping_key=torch.tensor([9]))
    >>> value, count = m.compute_with_count()
    >>> value.item(), count.item()
    (0.75, 2)
    """

    label_kind = "binary"

    def __init__(
        self, grouping_key: str = "", skip_constant_groups: bool = False, **kwargs: Any
    ) -> None:
        super().__init__(grouping_key, **kwargs)
        self.skip_constant_groups = bool(skip_constant_groups)

    def compute_with_count(self) -> tuple[Tensor, Tensor]:
        preds, target, keys = self._samples()
        stats = grouped_auc_stats(preds, target, keys, self._sample_weights())
        keep = None
        if self.skip_constant_groups and preds.numel():
            _, gid = torch.unique(keys, return_inverse=True)
            g = int(stats.u.numel())
            lo = torch.full((g,), float("inf"), device=preds.device)
            hi = torch.full((g,), float("-inf"), device=preds.device)
            lo.scatter_reduce_(0, gid, preds, "amin")
            hi.scatter_reduce_(0, gid, preds, "amax")
            keep = hi > lo
        return grouped_auc_from_stats(stats, keep)


class GroupedXAUC(_GroupedSamples):
    """XAUC of every group with at least two samples, averaged weighted by group size.

    Exact unless ``max_pairs_per_group`` is given (tzrec's estimate from at most that many
    random pairs per group; the generator is seeded once per metric by ``seed``, random
    when None, and advances at every compute, as :class:`~rankboard.service.metrics.XAUC`).
    NaN when no group has two samples. With per-sample ``weights`` a pair weighs
    ``w_i w_j`` and a group its total weight.

    >>> m = GroupedXAUC(grouping_key="user_id")
    >>> m.update(torch.tensor([0.1, 0.2, 0.3, 0.9, 0.5]), torch.tensor([1.0, 2.0, 3.0, 1.0, 2.0]),
    ...          grouping_key=torch.tensor([1, 1, 1, 2, 2]))
    >>> round(m.compute().item(), 4), m.num_groups
    (0.6, 2)
    """

    label_kind = "real"

    def __init__(
        self,
        grouping_key: str = "",
        max_pairs_per_group: int | None = None,
        seed: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(grouping_key, **kwargs)
        if max_pairs_per_group is not None and max_pairs_per_group < 1:
            raise ValueError("GroupedXAUC: max_pairs_per_group must be >= 1")
        self.max_pairs_per_group = max_pairs_per_group
        self.sampler = PairSampler(seed) if max_pairs_per_group is not None else None

    def compute_with_count(self) -> tuple[Tensor, Tensor]:
        preds, target, keys = self._samples()
        w = self._sample_weights()
        if self.max_pairs_per_group is not None and self.sampler is not None:
            with self.sampler.lock:
                return sampled_grouped_xauc(
                    preds,
                    target,
                    keys,
                    max_pairs_per_group=self.max_pairs_per_group,
                    generator=self.sampler.generator,
                    weights=w,
                )
        if w is not None:
            return weighted_grouped_xauc_from_stats(weighted_xauc_stats(preds, target, keys, w))
        return grouped_xauc_from_stats(grouped_xauc_stats(preds, target, keys))
