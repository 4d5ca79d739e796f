"""Learning-rate schedules of tzrec's ``*_learning_rate`` config messages.

Every schedule is a closed-form function of ``s``, the number of scheduler steps
taken so far (``s = 0`` right after construction), and of each param group's
base learning rate. A param group whose base learning rate is 0 is frozen: it
stays at 0 through warmup and decay alike.

The classes are registered by the name of their config message, so that
``SCHEDULERS["ExponentialDecayLR"]`` is the class that implements an
``exponential_decay_learning_rate {}`` block.

Example::

    >>> import torch
    >>> opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    >>> sched = ExponentialDecayLR(opt, decay_size=2, decay_factor=0.5, staircase=True)
    >>> lrs = []
    >>> for _ in range(5):
    ...     lrs.append(opt.param_groups[0]["lr"])
    ...     opt.step()
    ...     sched.step()
    >>> lrs
    [1.0, 1.0, 0.5, 0.5, 0.25]
"""

from __future__ import annotations

import bisect
import itertools
import math
from collections.abc import Sequence
from typing import ClassVar, TypedDict, Unpack

import torch
from torch.optim.lr_scheduler import LRScheduler

__all__ = [
    "SCHEDULERS",
    "BaseLR",
    "ConstantLR",
    "CosineAnnealingLR",
    "CosineAnnealingWarmRestartsLR",
    "ExponentialDecayLR",
    "ManualStepLR",
]

SCHEDULERS: dict[str, type[BaseLR]] = {}
"""Scheduler classes by the name of their config message (``"ConstantLR"``, ...)."""


def _linear(start: float, end: float, step: int, size: int) -> float:
    return start + (end - start) * step / size


class BaseLR(LRScheduler):
    """A closed-form schedule: subclasses define :meth:`lr_at`.

    Args:
        optimizer: any ``torch.optim.Optimizer``, including torchrec's
            ``KeyedOptimizerWrapper`` and ``CombinedOptimizer``.
        by_epoch: whether the training loop steps this schedule once per epoch
            (``True``) or once per optimizer step (``False``); the schedule
            itself only counts its own ``step()`` calls.
    """

    config_name: ClassVar[str] = ""

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        name = cls.__dict__.get("config_name") or cls.__name__
        if not name.startswith("_"):  # a private base (_WarmupLR) is no config message
            SCHEDULERS[name] = cls

    def __init__(self, optimizer: torch.optim.Optimizer, by_epoch: bool = False) -> None:
        self.by_epoch = by_epoch
        super().__init__(optimizer)

    def lr_at(self, base_lr: float, step: int) -> float:  # pragma: no cover - abstract
        """The learning rate after ``step`` scheduler steps for base rate ``base_lr``."""
        raise NotImplementedError

    def get_lr(self) -> list[float | torch.Tensor]:
        step = max(self.last_epoch, 0)
        return [0.0 if base == 0 else self.lr_at(float(base), step) for base in self.base_lrs]


def _check_warmup(warmup_size: int, warmup_learning_rate: float) -> None:
    if warmup_size < 0:
        raise ValueError(f"warmup_size must be >= 0, got {warmup_size}")
    if warmup_learning_rate < 0:
        raise ValueError(f"warmup_learning_rate must be >= 0, got {warmup_learning_rate}")


class WarmupArgs(TypedDict, total=False):
    """The keyword arguments every warmup schedule takes (see :class:`_WarmupLR`)."""

    min_learning_rate: float
    warmup_learning_rate: float
    warmup_size: int
    by_epoch: bool


class _WarmupLR(BaseLR):
    """A schedule with a linear warmup from ``warmup_learning_rate`` (default 0) to the
    base rate over ``warmup_size`` steps (default 0: none) and a floor
    ``min_learning_rate`` (default 0); subclasses take these as keywords
    (:class:`WarmupArgs`) and define :meth:`after_warmup`, of the steps taken since the
    warmup ended."""

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        *,
        min_learning_rate: float = 0.0,
        warmup_learning_rate: float = 0.0,
        warmup_size: int = 0,
        by_epoch: bool = False,
    ) -> None:
        if min_learning_rate < 0:
            raise ValueError(f"min_learning_rate must be >= 0, got {min_learning_rate}")
        _check_warmup(warmup_size, warmup_learning_rate)
        self.min_learning_rate = min_learning_rate
        self.warmup_learning_rate = warmup_learning_rate
        self.warmup_size = warmup_size
        super().__init__(optimizer, by_epoch=by_epoch)

    def lr_at(self, base_lr: float, step: int) -> float:
        if step < self.warmup_size:
            return _linear(self.warmup_learning_rate, base_lr, step, self.warmup_size)
        return self.after_warmup(base_lr, step - self.warmup_size)

    def after_warmup(self, base_lr: float, t: int) -> float:  # pragma: no cover - abstract
        """The learning rate ``t`` steps after the warmup for base rate ``base_lr``."""
        raise NotImplementedError


class ConstantLR(BaseLR):
    """Keeps each param group's base learning rate.

    >>> import torch
    >>> opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    >>> ConstantLR(opt).get_last_lr()
    [0.1]
    """

    def lr_at(self, base_lr: float, step: int) -> float:
        return base_lr


class ExponentialDecayLR(_WarmupLR):
    """Linear warmup, then ``base_lr * decay_factor ** p`` floored at ``min_learning_rate``.

    ``p = (s - warmup_size) / decay_size``, rounded down when ``staircase``.

    >>> import torch
    >>> opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    >>> s = ExponentialDecayLR(opt, decay_size=10, warmup_size=2, warmup_learning_rate=0.5)
    >>> s.get_last_lr()
    [0.5]
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        decay_size: int = 0,
        decay_factor: float = 0.95,
        staircase: bool = True,
        **warmup: Unpack[WarmupArgs],
    ) -> None:
        if decay_size <= 0:
            raise ValueError(f"ExponentialDecayLR.decay_size must be > 0, got {decay_size}")
        if decay_factor <= 0:
            raise ValueError(f"ExponentialDecayLR.decay_factor must be > 0, got {decay_factor}")
        self.decay_size = decay_size
        self.decay_factor = decay_factor
        self.staircase = staircase
        super().__init__(optimizer, **warmup)

    def after_warmup(self, base_lr: float, t: int) -> float:
        p = t / self.decay_size
        if self.staircase:
            p = math.floor(p)
        return max(base_lr * self.decay_factor**p, self.min_learning_rate)


class ManualStepLR(BaseLR):
    """Piecewise constant: ``learning_rates[i - 1]`` once ``s`` passes ``schedule_sizes[i - 1]``.

    Before (and at) ``schedule_sizes[0]`` the rate is the base rate, or with
    ``warmup`` a linear ramp from the base rate towards ``learning_rates[0]``.

    >>> import torch
    >>> opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    >>> s = ManualStepLR(opt, schedule_sizes=[1, 3], learning_rates=[0.1, 0.01])
    >>> [s.lr_at(1.0, i) for i in range(5)]
    [1.0, 1.0, 0.1, 0.1, 0.01]
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        schedule_sizes: Sequence[int] = (),
        learning_rates: Sequence[float] = (),
        warmup: bool = False,
        by_epoch: bool = False,
    ) -> None:
        sizes, rates = list(schedule_sizes), list(learning_rates)
        if not sizes:
            raise ValueError("ManualStepLR needs at least one schedule_sizes entry")
        if len(sizes) != len(rates):
            raise ValueError(
                f"ManualStepLR: schedule_sizes has {len(sizes)} entries but "
                f"learning_rates has {len(rates)}; they must have the same length"
            )
        if any(b <= a for a, b in itertools.pairwise(sizes)):
            raise ValueError(f"ManualStepLR.schedule_sizes must be increasing, got {sizes}")
        if warmup and sizes[0] <= 0:
            raise ValueError("ManualStepLR with warmup needs schedule_sizes[0] > 0")
        if any(r < 0 for r in rates):
            raise ValueError(f"ManualStepLR.learning_rates must be >= 0, got {rates}")
        self.schedule_sizes = sizes
        self.learning_rates = rates
        self.warmup = warmup
        super().__init__(optimizer, by_epoch=by_epoch)

    def lr_at(self, base_lr: float, step: int) -> float:
        i = bisect.bisect_left(self.schedule_sizes, step)
        if i > 0:
            return self.learning_rates[i - 1]
        if self.warmup:
            return _linear(base_lr, self.learning_rates[0], step, self.schedule_sizes[0])
        return base_lr


def _cosine(base_lr: float, min_lr: float, t: int, period: int) -> float:
    return min_lr + (base_lr - min_lr) * (1 + math.cos(math.pi * t / period)) / 2


class CosineAnnealingLR(_WarmupLR):
    """Linear warmup, then half a cosine from the base rate to ``min_learning_rate``.

    ``t = min(s - warmup_size, T_max)``: the rate stays at the minimum after ``T_max``.

    >>> import torch
    >>> opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    >>> s = CosineAnnealingLR(opt, T_max=4)
    >>> [round(s.lr_at(1.0, i), 4) for i in (0, 2, 4, 9)]
    [1.0, 0.5, 0.0, 0.0]
    """

    def __init__(
        self, optimizer: torch.optim.Optimizer, T_max: int = 0, **warmup: Unpack[WarmupArgs]
    ) -> None:
        if T_max <= 0:
            raise ValueError(f"CosineAnnealingLR.T_max must be > 0, got {T_max}")
        self.T_max = T_max
        super().__init__(optimizer, **warmup)

    def after_warmup(self, base_lr: float, t: int) -> float:
        return _cosine(base_lr, self.min_learning_rate, min(t, self.T_max), self.T_max)


class CosineAnnealingWarmRestartsLR(_WarmupLR):
    """Linear warmup, then cosine annealing restarted every ``T_0 * T_mult**k`` steps.

    >>> import torch
    >>> opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    >>> s = CosineAnnealingWarmRestartsLR(opt, T_0=2, T_mult=2)
    >>> [round(s.lr_at(1.0, i), 4) for i in range(7)]
    [1.0, 0.5, 1.0, 0.8536, 0.5, 0.1464, 1.0]
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        T_0: int = 0,
        T_mult: int = 1,
        **warmup: Unpack[WarmupArgs],
    ) -> None:
        if T_0 <= 0:
            raise ValueError(f"CosineAnnealingWarmRestartsLR.T_0 must be > 0, got {T_0}")
        if T_mult < 1:
            raise ValueError(f"CosineAnnealingWarmRestartsLR.T_mult must be >= 1, got {T_mult}")
        self.T_0 = T_0
        self.T_mult = T_mult
        super().__init__(optimizer, **warmup)

    def after_warmup(self, base_lr: float, t: int) -> float:
        period = self.T_0
        if self.T_mult == 1:
            t %= period
        else:
            while t >= period:  # periods grow geometrically: O(log t) iterations
                t -= period
                period *= self.T_mult
        return _cosine(base_lr, self.min_learning_rate, t, period)
