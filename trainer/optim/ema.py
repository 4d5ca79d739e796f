"""Exponential moving average of the dense weights (``dense_optimizer { ema {} }``).

tzrec's dense EMA (``DenseOptimizer.ema``, ``EMAConfig.decay`` default 0.999),
with the semantics of ``torch.optim.swa_utils.AveragedModel`` and
``get_ema_multi_avg_fn`` that tzrec builds it on. With ``n`` the number of
updates so far and ``w`` the weights just updated by the optimizer:

* the first update (n = 0) copies the weights: ``avg = w``;
* every later one moves the average: ``avg = decay * avg + (1 - decay) * w``;
* :meth:`DenseEMA.reset` sets n = 0 and ``avg = w``, so the next update copies
  again (tzrec resets the average when it restores a checkpoint, then loads the
  saved one if there is one).

The average is updated after every optimizer step that updates the weights
(:class:`EMAOptimizer` wraps the optimizer, so steps that a GradScaler skips on
inf/NaN gradients and gradient-accumulation micro-steps do not count). It covers
every dense parameter, those of the part optimizers included; embedding tables
whose optimizer is fused into the kernel (torchrec + fbgemm) are not averaged,
as in tzrec. :meth:`DenseEMA.average_parameters` runs a block (evaluation,
export) with the averaged weights in the model and puts the trained ones back
afterwards, on error too.

One deliberate difference from tzrec: for float16/bfloat16 weights the average
is kept in float32 (tzrec keeps the weights' dtype, where ``(1 - decay) * w``
with decay 0.999 is mostly rounded away, so a bf16 average would hardly move).
For float32 weights the values are those of ``AveragedModel`` bit for bit.

Example (tzrec/optim/ema_test.py's values)::

    >>> import torch
    >>> w = torch.nn.Parameter(torch.tensor([1.0]))
    >>> ema = DenseEMA({"w": w}, decay=0.5)
    >>> with torch.no_grad():
    ...     _ = w.fill_(2.0)
    >>> ema.update()                  # first update: copies 2.0
    >>> with torch.no_grad():
    ...     _ = w.fill_(4.0)
    >>> ema.update()                  # 0.5 * 2.0 + 0.5 * 4.0
    >>> int(ema.n_averaged), ema.state_dict()["w"].item()
    (2, 3.0)
    >>> with ema.average_parameters():
    ...     w.item()
    3.0
    >>> w.item()
    4.0
"""

from __future__ import annotations

import contextlib
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch import nn
from torchrec.optim.keyed import KeyedOptimizer, OptimizerWrapper

from rankboard.protos import optimizer_pb2

__all__ = ["DENSE_EMA_N_AVERAGED", "DenseEMA", "EMAOptimizer"]

DENSE_EMA_N_AVERAGED = "__n_averaged__"
"""Key of the update counter in :meth:`DenseEMA.state_dict` (tzrec's key)."""

_HALF = (torch.float16, torch.bfloat16)


def _f32(value: float) -> float:
    return float(f"{value:.7g}")


class DenseEMA:
    """A moving average of named dense parameters, updated after optimizer steps.

    Args:
        named_parameters: the parameters to average, by fully qualified name.
        decay: weight of the old average, in [0, 1] (1 keeps the first copy).

    >>> import torch
    >>> DenseEMA({"w": torch.nn.Parameter(torch.zeros(1))}, decay=1.1)
    Traceback (most recent call last):
    ...
    ValueError: ema decay must be in [0, 1], got 1.1
    """

    def __init__(self, named_parameters: Mapping[str, nn.Parameter], decay: float) -> None:
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"ema decay must be in [0, 1], got {decay}")
        if not named_parameters:
            raise ValueError("ema: no dense parameters to average")
        for name, p in named_parameters.items():
            if not p.is_floating_point():
                raise ValueError(f"ema: parameter {name} is {p.dtype}, not floating point")
        self.decay = float(decay)
        self.params: dict[str, nn.Parameter] = dict(named_parameters)
        self.averages: dict[str, torch.Tensor] = {
            name: p.detach().to(torch.float32 if p.dtype in _HALF else p.dtype, copy=True)
            for name, p in self.params.items()
        }
        # on the CPU whatever the parameters' device, as AveragedModel's buffer
        self.n_averaged = torch.zeros((), dtype=torch.long)

    @classmethod
    def from_config(
        cls, named_parameters: Mapping[str, nn.Parameter], cfg: optimizer_pb2.EMAConfig
    ) -> DenseEMA:
        """Build from a ``DenseOptimizer.ema`` message (``decay``, read as its 7-digit decimal).

        >>> import torch
        >>> from rankboard.protos import optimizer_pb2
        >>> ema = DenseEMA.from_config({"w": torch.nn.Parameter(torch.zeros(2))},
        ...                            optimizer_pb2.EMAConfig())
        >>> ema.decay
        0.999
        """
        return cls(named_parameters, _f32(cfg.decay))

    def _sources(self) -> list[torch.Tensor]:
        return [
            p.detach() if p.dtype == self.averages[n].dtype else p.detach().to(torch.float32)
            for n, p in self.params.items()
        ]

    @torch.no_grad()
    def update(self) -> None:
        """Fold in the current weights: copy on the first update, then decay."""
        averages = list(self.averages.values())
        if int(self.n_averaged) == 0:
            torch._foreach_copy_(averages, self._sources())
        else:
            torch._foreach_lerp_(averages, self._sources(), 1.0 - self.decay)
        self.n_averaged += 1

    @torch.no_grad()
    def reset(self) -> None:
        """Restart the average: n = 0 and the average = the current weights.

        >>> import torch
        >>> w = torch.nn.Parameter(torch.tensor([1.0]))
        >>> ema = DenseEMA({"w": w}, decay=0.5)
        >>> ema.update()
        >>> with torch.no_grad():
        ...     _ = w.fill_(3.0)
        >>> ema.reset()
        >>> int(ema.n_averaged), ema.averages["w"].item()
        (0, 3.0)
        """
        self.n_averaged.zero_()
        torch._foreach_copy_(list(self.averages.values()), self._sources())

    @torch.no_grad()
    def copy_to(self) -> None:
        """Write the average into the parameters for good (e.g. before an export)."""
        for name, p in self.params.items():
            p.copy_(self.averages[name])

    @contextlib.contextmanager
    def average_parameters(self) -> Iterator[None]:
        """Run the block with the averaged weights; the trained ones come back after.

        The trained weights are restored even when the block raises; the average
        itself is not changed by the block.
        """
        with torch.no_grad():
            saved = [
                p.detach().clone(memory_format=torch.preserve_format) for p in self.params.values()
            ]
            self.copy_to()
        try:
            yield
        finally:
            with torch.no_grad():
                torch._foreach_copy_([p.detach() for p in self.params.values()], saved)

    def state_dict(self) -> OrderedDict[str, torch.Tensor]:
        """The averages by parameter name, and the counter under ``"__n_averaged__"``."""
        state: OrderedDict[str, torch.Tensor] = OrderedDict(
            (name, t.clone()) for name, t in self.averages.items()
        )
        state[DENSE_EMA_N_AVERAGED] = self.n_averaged.clone()
        return state

    @torch.no_grad()
    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        """Restore what :meth:`state_dict` returned (same parameter names)."""
        names = set(state) - {DENSE_EMA_N_AVERAGED}
        if names != set(self.averages):
            raise ValueError(
                f"ema state has parameters {sorted(names)}, this model {sorted(self.averages)}"
            )
        for name, t in state.items():
            if name != DENSE_EMA_N_AVERAGED:
                self.averages[name].copy_(t)
        self.n_averaged.fill_(int(state.get(DENSE_EMA_N_AVERAGED, 0)))


class EMAOptimizer(OptimizerWrapper):
    """Steps the wrapped optimizer, then updates ``dense_ema``.

    Wrap the combined optimizer with it (inside any GradScaler or accumulation
    wrapper), so that the average follows exactly the steps that happen.

    >>> import torch
    >>> from torchrec.optim.keyed import KeyedOptimizerWrapper
    >>> w = torch.nn.Parameter(torch.tensor([1.0]))
    >>> ema = DenseEMA({"w": w}, decay=0.5)
    >>> opt = EMAOptimizer(KeyedOptimizerWrapper(
    ...     {"w": w}, lambda params: torch.optim.SGD(params, lr=1.0)), ema)
    >>> for g in (-1.0, -2.0):
    ...     w.grad = torch.tensor([g])
    ...     opt.step()
    >>> w.item(), ema.averages["w"].item()     # w: 1 -> 2 -> 4; average 2 then 3
    (4.0, 3.0)
    """

    def __init__(self, optimizer: KeyedOptimizer, dense_ema: DenseEMA) -> None:
        super().__init__(optimizer)
        self.dense_ema = dense_ema

    def step(self, closure: Any = None) -> None:
        """The wrapped optimizer's step, then the EMA update."""
        self._optimizer.step(closure=closure)
        self.dense_ema.update()
