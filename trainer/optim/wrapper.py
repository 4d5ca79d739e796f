"""The optimizer as the training loop drives it: gradient accumulation and AMP loss scaling.

Example::

    >>> import torch
    >>> w = torch.nn.Parameter(torch.zeros(1))
    >>> opt = TrainStepOptimizer(torch.optim.SGD([w], lr=1.0), accumulation_steps=2)
    >>> stepped = []
    >>> for _ in range(4):
    ...     opt.zero_grad()
    ...     opt.backward(-w.sum())
    ...     stepped.append(opt.step())
    >>> stepped, w.item()
    ([False, True, False, True], 2.0)
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

import torch

from rankboard.protos import train_pb2

__all__ = ["MIXED_PRECISION_DTYPES", "TrainStepOptimizer"]

logger = logging.getLogger(__name__)

MIXED_PRECISION_DTYPES: dict[str, torch.dtype] = {"FP16": torch.float16, "BF16": torch.bfloat16}
"""``TrainConfig.mixed_precision`` values and the autocast dtype they select."""


class TrainStepOptimizer:
    """Wraps an optimizer so that ``zero_grad``/``step`` act every k-th training step.

    With ``accumulation_steps = k``, :meth:`zero_grad` acts only at the start of
    each window of k steps and :meth:`step` only at its end; :meth:`backward`
    divides the loss by k so that the accumulated gradient is the window's mean.
    With a ``GradScaler``, :meth:`backward` scales the loss and :meth:`step` runs
    ``scaler.step(optimizer)`` then ``scaler.update()``.

    Sparse optimizers fused into embedding kernels update in backward: they see
    every micro-batch (no accumulation) and a scaled gradient under a GradScaler.

    Args:
        optimizer: the optimizer to drive (e.g. a torchrec ``CombinedOptimizer``).
        accumulation_steps: k >= 1.
        grad_scaler: an optional ``torch.amp.GradScaler``.
        autocast_dtype: dtype for :meth:`autocast` (None: full precision).
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        accumulation_steps: int = 1,
        grad_scaler: torch.amp.GradScaler | None = None,
        autocast_dtype: torch.dtype | None = None,
    ) -> None:
        if accumulation_steps < 1:
            raise ValueError(f"gradient_accumulation_steps must be >= 1, got {accumulation_steps}")
        self.optimizer = optimizer
        self.accumulation_steps = accumulation_steps
        self.grad_scaler = grad_scaler
        self.autocast_dtype = autocast_dtype
        self.micro_step = 0  # training steps (calls to step()) so far

    @classmethod
    def from_config(
        cls,
        optimizer: torch.optim.Optimizer,
        train_config: train_pb2.TrainConfig,
        device: torch.device | str = "cpu",
    ) -> TrainStepOptimizer:
        """Build from ``gradient_accumulation_steps``, ``grad_scaler`` and ``mixed_precision``.

        ``gradient_accumulation_steps: 0`` means no accumulation, as in tzrec
        (where 0 is the field's default).

        >>> import torch
        >>> from rankboard.protos import parse_text, train_pb2
        >>> cfg = parse_text('gradient_accumulation_steps: 4 mixed_precision: "BF16"',
        ...                  train_pb2.TrainConfig())
        >>> w = TrainStepOptimizer.from_config(torch.optim.SGD([torch.nn.Parameter(
        ...     torch.zeros(1))], lr=0.1), cfg)
        >>> w.accumulation_steps, w.autocast_dtype, w.grad_scaler
        (4, torch.bfloat16, None)
        """
        precision = train_config.mixed_precision
        if precision and precision not in MIXED_PRECISION_DTYPES:
            raise ValueError(
                f"mixed_precision must be one of {', '.join(MIXED_PRECISION_DTYPES)} "
                f"or empty, got {precision!r}"
            )
        scaler = None
        if train_config.HasField("grad_scaler"):
            gs = train_config.grad_scaler
            scaler = torch.amp.GradScaler(
                torch.device(device).type,
                init_scale=gs.init_scale,
                growth_factor=gs.growth_factor,
                backoff_factor=gs.backoff_factor,
                growth_interval=gs.growth_interval,
            )
            if precision != "FP16":
                logger.warning("grad_scaler is set but mixed_precision is %r, not FP16", precision)
        return cls(
            optimizer,
            accumulation_steps=max(train_config.gradient_accumulation_steps, 1),
            grad_scaler=scaler,
            autocast_dtype=MIXED_PRECISION_DTYPES.get(precision),
        )

    @property
    def at_window_start(self) -> bool:
        """Whether the next training step starts an accumulation window."""
        return self.micro_step % self.accumulation_steps == 0

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Zero gradients, only at the start of an accumulation window."""
        if self.at_window_start:
            self.optimizer.zero_grad(set_to_none=set_to_none)

    def backward(self, loss: torch.Tensor) -> None:
        """``loss / k`` backward, scaled by the GradScaler when there is one."""
        loss = loss / self.accumulation_steps
        if self.grad_scaler is not None:
            loss = self.grad_scaler.scale(loss)
        loss.backward()

    def step(self) -> bool:
        """End one training step; returns True when the optimizer actually stepped."""
        self.micro_step += 1
        if not self.at_window_start:
            return False
        if self.grad_scaler is not None:
            self.grad_scaler.step(self.optimizer)
            self.grad_scaler.update()
        else:
            self.optimizer.step()
        return True

    @contextlib.contextmanager
    def autocast(self, device_type: str = "cpu") -> Iterator[None]:
        """``torch.autocast`` with the configured dtype; a no-op in full precision."""
        if self.autocast_dtype is None:
            yield
        else:
            with torch.autocast(device_type, dtype=self.autocast_dtype):
                yield

    def state_dict(self) -> dict:
        """The wrapper's own state (micro step and scaler), for checkpoints."""
        state: dict = {"micro_step": self.micro_step}
        if self.grad_scaler is not None:
            state["grad_scaler"] = self.grad_scaler.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        """Restore what :meth:`state_dict` returned."""
        self.micro_step = int(state["micro_step"])
        if self.grad_scaler is not None and "grad_scaler" in state:
            self.grad_scaler.load_state_dict(state["grad_scaler"])
