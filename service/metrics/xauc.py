"""XAUC for real-valued targets (e.g. watch time): exact, sampled, or in-batch."""

from __future__ import annotations

import math
import secrets
import threading
from typing import Any

import torch
from torch import Tensor

from rankboard.service.metrics._weights import aligned_weights, fill_missing_weights
from rankboard.service.metrics.base import RankMetric
from rankboard.service.metrics.functional._validation import Batch
from rankboard.service.metrics.functional.xauc import (
    grouped_xauc_stats,
    sampled_xauc,
    weighted_grouped_xauc_from_stats,
    weighted_xauc_stats,
)

__all__ = ["XAUC", "PairSampler"]


class PairSampler:
    """The random generator of a sampling metric: seeded once, advanced by every draw.

    Copies of a metric (``copy.copy`` / ``copy.deepcopy``, as the service makes to compute
    a snapshot outside its lock) share the one sampler, so the sequence of values does not
    repeat. ``seed=None`` draws a seed from the OS; :attr:`seed` holds the one in use.

    >>> a, b = PairSampler(7), PairSampler(7)
    >>> x = torch.randint(0, 100, (3,), generator=a.generator)
    >>> torch.equal(x, torch.randint(0, 100, (3,), generator=b.generator))
    True
    """

    def __init__(self, seed: int | None = None) -> None:
        self.seed = secrets.randbits(63) if seed is None else int(seed)
        if not 0 <= self.seed < 2**64:
            raise ValueError(f"seed must be in [0, 2**64), got {seed}")
        self.generator = torch.Generator().manual_seed(self.seed)
        self.lock = threading.Lock()

    def __deepcopy__(self, memo: dict) -> PairSampler:
        return self

    def __copy__(self) -> PairSampler:
        return self

    def __getstate__(self) -> dict[str, Any]:
        return {"seed": self.seed, "gen": self.generator.get_state()}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.seed = state["seed"]
        self.generator = torch.Generator()
        self.generator.set_state(state["gen"])
        self.lock = threading.Lock()


class XAUC(RankMetric):
    """Fraction of sample pairs whose targets and predictions are ordered alike.

    Modes:

    * default, exact: over all ``n (n - 1) / 2`` pairs, ties in either counting as
      disagreement; ``O(n log n)`` at compute; keeps float32 preds and targets.
    * ``sample_ratio`` and/or ``max_pairs`` given: tzrec's estimate from random pairs:
      ``max_pairs`` of them when it is given (``sample_ratio`` is then ignored, as in
      tzrec; capped at the ``n (n - 1) / 2`` pairs there are), else
      ``max(1, n (n - 1) / 2 * sample_ratio)``, uniform among the pairs, with
      replacement. The generator (:class:`PairSampler`) is seeded once per metric by
      ``seed`` (random when None) and advances at every compute: repeated computes are
      independent draws, as in tzrec, and a given seed replays the same sequence.
    * ``in_batch=True``: the mean of the exact XAUC of every batch of >= 2 samples (state:
      two float64 / int64 sums).

    Per-sample ``weights`` (torchrec's weighted XAUC): a pair weighs ``w_i * w_j``, the
    value is the weight of the concordant pairs over the weight of all pairs (in-batch:
    per batch, then the mean over batches; sampled: over the sampled pairs). Pairs tied
    in both prediction and target count as disagreement here and in tzrec, as agreement
    in torchrec (see docs/metric-conventions.md).

    NaN with fewer than two samples (in-batch: no batch of two).

    >>> m = XAUC()
    >>> m.update(torch.tensor([0.1, 0.2]), torch.tensor([1.0, 3.0]))
    >>> m.update(torch.tensor([0.3, 0.3]), torch.tensor([2.0, 5.0]))
    >>> round(m.compute().item(), 4)
    0.6667
    """

    label_kind = "real"
    supports_weights = True

    # states (registered by add_state in __init__)
    batch_sum: Tensor
    batch_count: Tensor
    preds: list[Tensor]
    target: list[Tensor]
    weights: list[Tensor]

    def __init__(
        self,
        sample_ratio: float | None = None,
        max_pairs: int | None = None,
        in_batch: bool = False,
        seed: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if sample_ratio is not None and not 0 < sample_ratio <= 1:
            raise ValueError(f"XAUC: sample_ratio must be in (0, 1], got {sample_ratio}")
        if max_pairs is not None and max_pairs < 1:
            raise ValueError(f"XAUC: max_pairs must be >= 1, got {max_pairs}")
        self.in_batch = bool(in_batch)
        self.sampling = not self.in_batch and (sample_ratio is not None or max_pairs is not None)
        self.sample_ratio = 1e-3 if sample_ratio is None else float(sample_ratio)
        self.max_pairs = max_pairs
        self.sampler = PairSampler(seed) if self.sampling else None
        if self.in_batch:
            self.add_state(
                "batch_sum", torch.tensor(0.0, dtype=torch.float64), "sum", persistent=True
            )
            self.add_state("batch_count", torch.tensor(0), "sum", persistent=True)
        else:
            self.add_state("preds", [], dist_reduce_fx="cat", persistent=True)
            self.add_state("target", [], dist_reduce_fx="cat", persistent=True)
            self.add_state("weights", [], dist_reduce_fx="cat", persistent=True)

    def _upgrade_state(self, state: dict[str, Any], prefix: str) -> None:
        if not self.in_batch and prefix + "preds" in state and prefix + "weights" not in state:
            # saved before weights were kept: every sample unweighted
            state[prefix + "weights"] = fill_missing_weights(state[prefix + "preds"])

    def _update_batch(self, b: Batch) -> None:
        """Add a batch: ``preds`` (n,) and ``target`` (n,) finite reals, ``weights`` (n,)."""
        if self.in_batch:
            if b.size < 2:
                return
            if b.weights is not None:
                value = weighted_grouped_xauc_from_stats(
                    weighted_xauc_stats(b.preds, b.target, None, b.weights)
                )[0]
                if torch.isnan(value):
                    return  # no pair with positive weight: no batch value
                self.batch_sum += value
            else:
                s = grouped_xauc_stats(b.preds, b.target)
                pairs = b.size * (b.size - 1) // 2
                self.batch_sum += s.concordant.sum().to(torch.float64) / pairs
            self.batch_count += 1
        else:
            self.preds.append(b.preds)
            self.target.append(b.target)
            # an empty chunk stands for unit weights: unweighted streams keep no weights
            self.weights.append(b.weights if b.weights is not None else b.preds.new_empty(0))

    def compute(self) -> Tensor:
        """The XAUC, a 0-d float64 tensor (NaN when undefined)."""
        nan = torch.tensor(math.nan, dtype=torch.float64, device=self.device)
        if self.in_batch:
            c = self.batch_count
            return torch.where(c > 0, self.batch_sum / c.clamp(min=1), nan)
        empty = torch.zeros(0, device=self.device)
        preds, target = self._cat(self.preds, empty), self._cat(self.target, empty)
        n = int(preds.numel())
        if n < 2:
            return nan
        w = aligned_weights(self.preds, self.weights)
        if self.sampler is not None:
            with self.sampler.lock:
                return sampled_xauc(
                    preds,
                    target,
                    sample_ratio=self.sample_ratio,
                    max_pairs=self.max_pairs,
                    generator=self.sampler.generator,
                    weights=w,
                )
        if w is not None:
            return weighted_grouped_xauc_from_stats(weighted_xauc_stats(preds, target, None, w))[0]
        conc = grouped_xauc_stats(preds, target).concordant.sum()
        return conc.to(torch.float64) / (n * (n - 1) // 2)
