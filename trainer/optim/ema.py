"""Exponential moving average of the dense weights (``TrainConfig.ema_config``).

After optimizer step s (s = 1, 2, ...), with the weights w_s just updated:

* s < ``start_step``: the average follows the weights (avg = w_s), so that it
  starts from trained weights rather than from the initialisation;
* s >= ``start_step`` and (s - ``start_step``) a multiple of ``update_interval``:
  avg = decay * avg + (1 - decay) * w_s;
* other steps leave it as it is.

The average is kept in float32 for half-precision weights and updated with one
``torch._foreach_lerp_`` over all tensors. Embedding tables whose optimizer is
fused into the kernel (torchrec + fbgemm) are not averaged: they are updated
inside backward, row by row, and an average of a table of millions of rows
would double its memory for a gain that recommendation models rarely see.

Example::

    >>> import torch
    >>> w = torch.nn.Parameter(torch.zeros(1))
    >>> ema = ExponentialMovingAverage({"w": w}, decay=0.5)
    >>> for s in (1, 2):
    ...     with torch.no_grad():
    ...         w += 1.0           # the optimizer's step
    ...     _ = ema.update(s)
    >>> ema.shadow["w"].item()     # 0.5 * (0.5 * 0 + 0.5 * 1) + 0.5 * 2
    1.25
    >>> with ema.average_parameters():
    ...     w.item()
    1.25
    >>> w.item()
    2.0
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping

import torch
from torch import nn

from rankboard.protos import optimizer_pb2

__all__ = ["ExponentialMovingAverage"]

_HALF = (torch.float16, torch.bfloat16)


class ExponentialMovingAverage:
    """A moving average of named parameters, stepped after each optimizer step.

    Args:
        params: the parameters to average, by name.
        decay: weight of the old average, in [0, 1).
        update_interval: average every this many optimizer steps (>= 1).
        start_step: the first optimizer step that averages (before it the
            average follows the weights).
    """

    def __init__(
        self,
        params: Mapping[str, nn.Parameter],
        decay: float,
        update_interval: int = 1,
        start_step: int = 0,
    ) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"ema decay must be in [0, 1), got {decay}")
        if update_interval < 1:
            raise ValueError(f"ema update_interval must be >= 1, got {update_interval}")
        if start_step < 0:
            raise ValueError(f"ema start_step must be >= 0, got {start_step}")
        if not params:
            raise ValueError("ema: no parameters to average")
        self.decay = float(decay)
        self.update_interval = int(update_interval)
        self.start_step = int(start_step)
        self.params = dict(params)
        self.shadow: dict[str, torch.Tensor] = {
            name: p.detach().to(torch.float32 if p.dtype in _HALF else p.dtype, copy=True)
            for name, p in self.params.items()
        }
        self.num_updates = 0  # steps that averaged

    @classmethod
    def from_config(
        cls, params: Mapping[str, nn.Parameter], cfg: optimizer_pb2.EMAConfig
    ) -> ExponentialMovingAverage:
        """Build from an ``EMAConfig`` message (``decay``, ``update_interval``, ``start_step``).

        >>> from rankboard.protos import optimizer_pb2
        >>> w = torch.nn.Parameter(torch.zeros(2))
        >>> ema = ExponentialMovingAverage.from_config(
        ...     {"w": w}, optimizer_pb2.EMAConfig(decay=0.9, update_interval=2))
        >>> round(ema.decay, 6), ema.update_interval, ema.start_step
        (0.9, 2, 0)
        """
        return cls(params, cfg.decay, cfg.update_interval, cfg.start_step)

    def _sources(self) -> list[torch.Tensor]:
        return [
            p.detach() if p.dtype == self.shadow[n].dtype else p.detach().to(self.shadow[n].dtype)
            for n, p in self.params.items()
        ]

    @torch.no_grad()
    def update(self, optimizer_step: int) -> bool:
        """Fold in the weights after optimizer step ``optimizer_step`` (1-based).

        Returns True when the average moved towards the weights by ``1 - decay``.
        """
        shadows = list(self.shadow.values())
        if optimizer_step < self.start_step:
            torch._foreach_copy_(shadows, self._sources())
            return False
        if (optimizer_step - self.start_step) % self.update_interval:
            return False
        torch._foreach_lerp_(shadows, self._sources(), 1.0 - self.decay)
        self.num_updates += 1
        return True

    @torch.no_grad()
    def copy_to(self) -> None:
        """Write the average into the parameters (to export or evaluate the averaged model)."""
        for name, p in self.params.items():
            p.copy_(self.shadow[name])

    @contextlib.contextmanager
    def average_parameters(self) -> Iterator[None]:
        """Run the block with the averaged weights; the trained ones come back after.

        >>> w = torch.nn.Parameter(torch.ones(1))
        >>> ema = ExponentialMovingAverage({"w": w}, decay=0.0)
        >>> ema.shadow["w"].fill_(3.0) is not None
        True
        >>> with ema.average_parameters():
        ...     w.item()
        3.0
        >>> w.item()
        1.0
        """
        with torch.no_grad():
            saved = {n: p.detach().clone() for n, p in self.params.items()}
            self.copy_to()
        try:
            yield
        finally:
            with torch.no_grad():
                for name, p in self.params.items():
                    p.copy_(saved[name])

    def state_dict(self) -> dict:
        """The average and its counter, for checkpoints."""
        return {
            "shadow": {n: t.clone() for n, t in self.shadow.items()},
            "num_updates": self.num_updates,
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore what :meth:`state_dict` returned (same parameter names)."""
        shadow = state["shadow"]
        if set(shadow) != set(self.shadow):
            raise ValueError(
                f"ema state has parameters {sorted(shadow)}, this model {sorted(self.shadow)}"
            )
        with torch.no_grad():
            for name, t in shadow.items():
                self.shadow[name].copy_(t)
        self.num_updates = int(state["num_updates"])
