"""One call from a model and a ``TrainConfig`` to everything the training loop steps.

Example (a plain dense model; see :func:`build_optimizers` for a sharded one)::

    >>> import torch
    >>> from rankboard.protos import parse_text, train_pb2
    >>> cfg = parse_text('''
    ...     dense_optimizer {
    ...       adam_optimizer { lr: 0.01 }
    ...       exponential_decay_learning_rate { decay_size: 1 decay_factor: 0.5 }
    ...       part_optimizers { sgd_optimizer { lr: 0.1 } regex_pattern: "bias" }
    ...     }''', train_pb2.TrainConfig())
    >>> model = torch.nn.Linear(2, 1)
    >>> opts = build_optimizers(model, cfg)
    >>> [g["lr"] for g in opts.optimizer.param_groups]
    [0.01, 0.1]
    >>> opts.zero_grad(); opts.backward(model(torch.ones(1, 2)).sum()); opts.step()
    True
    >>> [g["lr"] for g in opts.optimizer.param_groups]
    [0.005, 0.05]

With ``dense_optimizer { ema {} }`` the dense weights are averaged after every
optimizer step (:class:`~rankboard.trainer.optim.ema.DenseEMA`); evaluate under
``with opts.ema.average_parameters(): ...``. rankboard's former
``train_config.ema_config`` is refused with a pointer to it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch
from torch import nn
from torchrec.optim.clipping import GradientClipping, GradientClippingOptimizer
from torchrec.optim.keyed import CombinedOptimizer, KeyedOptimizer

from rankboard.protos import ConfigError, train_pb2
from rankboard.trainer.optim.builder import (
    build_part_optimizers,
    create_dense_optimizer,
    create_part_optim_schedulers,
    create_part_optimizer,
    create_scheduler,
    group_param_by_regex_pattern,
    keyed_optimizer,
    sparse_initial_accumulator_value,
)
from rankboard.trainer.optim.ema import DenseEMA, EMAOptimizer
from rankboard.trainer.optim.fused import dense_named_parameters, set_initial_accumulator
from rankboard.trainer.optim.lr_scheduler import BaseLR
from rankboard.trainer.optim.wrapper import TrainStepOptimizer

__all__ = ["GRAD_CLIPPING_TYPES", "TrainOptimizers", "build_optimizers", "check_train_config"]

logger = logging.getLogger(__name__)


@dataclass
class TrainOptimizers:
    """The combined optimizer, its schedulers and the training-step wrapper.

    ``optimizer`` is a torchrec ``CombinedOptimizer`` of the fused sparse
    optimizer (if any), the main dense optimizer (if any) and the part
    optimizers, in that order; ``schedulers`` has one schedule per member, in
    the same order. Drive it with :meth:`zero_grad`, :meth:`backward`,
    :meth:`step` every training step and :meth:`end_epoch` after each epoch.
    With ``dense_optimizer { ema {} }``, ``ema`` averages the dense weights after
    each optimizer step that updates them; evaluate under
    ``with opts.ema.average_parameters(): ...``.
    """

    optimizer: CombinedOptimizer
    schedulers: list[BaseLR]
    wrapper: TrainStepOptimizer
    members: list[tuple[str, torch.optim.Optimizer]] = field(default_factory=list)
    ema: DenseEMA | None = None

    @property
    def optimizer_steps(self) -> int:
        """Optimizer steps taken (training steps / accumulation steps)."""
        return self.wrapper.micro_step // self.wrapper.accumulation_steps

    def zero_grad(self) -> None:
        """Zero gradients at the start of an accumulation window."""
        self.wrapper.zero_grad()

    def backward(self, loss: torch.Tensor) -> None:
        """Backward of the (accumulation-divided, AMP-scaled) loss."""
        self.wrapper.backward(loss)

    def step(self) -> bool:
        """Optimizer step at the end of a window, then the per-step schedules."""
        stepped = self.wrapper.step()
        if stepped:
            for scheduler in self.schedulers:
                if not scheduler.by_epoch:
                    scheduler.step()
        return stepped

    def end_epoch(self) -> None:
        """Step the per-epoch schedules."""
        for scheduler in self.schedulers:
            if scheduler.by_epoch:
                scheduler.step()


GRAD_CLIPPING_TYPES: dict[str, GradientClipping] = {
    "none": GradientClipping.NONE,
    "norm": GradientClipping.NORM,
    "value": GradientClipping.VALUE,
}
"""``TrainConfig.grad_clipping.clipping_type`` values (case-insensitive, as in tzrec)."""

# TrainConfig fields that steer only tzrec's own job (checkpoint files, tensorboard,
# profiling, embedding dumps): parsed so that tzrec configs load, not acted on here.
_JOB_ONLY_FIELDS = (
    "keep_checkpoint_max",
    "save_checkpoints_timestamp_interval",
    "save_checkpoints_timestamps",
    "save_checkpoints_timestamp_quorum",
    "delta_embedding_dump_config",
)


def check_train_config(train_config: train_pb2.TrainConfig) -> None:
    """Refuse what rankboard retired; log the tzrec job fields its trainer does not use.

    >>> from rankboard.protos import parse_text, train_pb2
    >>> try:
    ...     check_train_config(parse_text("ema_config { decay: 0.99 }", train_pb2.TrainConfig()))
    ... except ValueError as err:
    ...     message = str(err)
    >>> message.startswith("train_config.ema_config (rankboard's own EMA, field 1001) is retired")
    True
    >>> "`dense_optimizer { ema { decay: 0.99 } }`" in message
    True
    """
    if train_config.HasField("ema_config"):
        old = train_config.ema_config
        extra = ""
        if old.update_interval != 1 or old.start_step != 0:
            extra = (
                " (update_interval and start_step have no counterpart: the average is "
                "updated after every optimizer step and its first update copies the weights)"
            )
        raise ConfigError(
            "train_config.ema_config (rankboard's own EMA, field 1001) is retired: use "
            f"tzrec's `dense_optimizer {{ ema {{ decay: {_f32(old.decay)} }} }}` instead, "
            "whose first update copies the weights rather than averaging them with the "
            f"initial ones{extra}"
        )
    unused = [name for name in _JOB_ONLY_FIELDS if _is_set(train_config, name)]
    if unused:
        logger.info("train_config fields not used by rankboard's trainer: %s", ", ".join(unused))


def _f32(value: float) -> float:
    return float(f"{value:.7g}")


def _is_set(msg: train_pb2.TrainConfig, name: str) -> bool:
    field = msg.DESCRIPTOR.fields_by_name[name]
    return len(getattr(msg, name)) > 0 if field.is_repeated else msg.HasField(name)


def _clipping_optimizer(optimizer: KeyedOptimizer, cfg: train_pb2.GradClipping) -> KeyedOptimizer:
    """``optimizer`` wrapped in torchrec's GradientClippingOptimizer per ``cfg`` (as tzrec)."""
    kind = GRAD_CLIPPING_TYPES.get(cfg.clipping_type.lower())
    if kind is None:
        raise ConfigError(
            f"grad_clipping.clipping_type must be one of {', '.join(GRAD_CLIPPING_TYPES)}, "
            f"got {cfg.clipping_type!r}"
        )
    if kind == GradientClipping.NONE:
        return optimizer
    if cfg.max_gradient <= 0:
        raise ConfigError(f"grad_clipping.max_gradient must be > 0, got {cfg.max_gradient}")
    return GradientClippingOptimizer(
        optimizer,
        clipping=kind,
        max_gradient=_f32(cfg.max_gradient),
        norm_type=_f32(cfg.norm_type),
        enable_global_grad_clip=cfg.enable_global_grad_clip,
    )


def _infer_device(model: nn.Module) -> torch.device:
    for param in model.parameters():
        if param.device.type != "meta":
            return param.device
    return torch.device("cpu")


def build_optimizers(
    model: nn.Module,
    train_config: train_pb2.TrainConfig,
    *,
    device: torch.device | str | None = None,
    init_sparse_state: bool = True,
) -> TrainOptimizers:
    """Build the optimizers, schedulers and wrapper of ``train_config`` for ``model``.

    ``model`` is either a plain module (every parameter is dense) or a model
    sharded with ``DistributedModelParallel`` after
    :func:`~rankboard.trainer.optim.fused.apply_sparse_optimizer`; then its
    ``fused_optimizer`` is the sparse member and the dense parameters are
    those not updated in backward. With ``init_sparse_state`` (the default) a
    sparse Adagrad's accumulators are set to ``initial_accumulator_value``:
    build before loading a checkpoint.
    """
    check_train_config(train_config)
    members: list[tuple[str, torch.optim.Optimizer]] = []
    schedulers: list[BaseLR] = []

    fused: KeyedOptimizer | None = getattr(model, "fused_optimizer", None)
    has_fused = fused is not None and len(fused.param_groups) > 0
    dense_params = dense_named_parameters(model)
    in_backward = len(dict(model.named_parameters())) - len(dense_params)
    if train_config.HasField("sparse_optimizer"):
        sparse_cfg = train_config.sparse_optimizer
        if not has_fused:
            hint = (
                "shard it with DistributedModelParallel (table-wise) first"
                if in_backward
                else "call apply_sparse_optimizer before sharding it"
            )
            raise ValueError(
                f"train_config has a sparse_optimizer but the model has no "
                f"fused embedding tables: {hint}"
            )
        assert fused is not None
        value = sparse_initial_accumulator_value(sparse_cfg)
        if init_sparse_state and value:
            set_initial_accumulator(fused, value)
        members.append(("sparse", fused))
        schedulers.append(create_scheduler(fused, sparse_cfg))
    elif has_fused:
        raise ValueError(
            "the model has fused embedding tables but train_config has no "
            "sparse_optimizer to schedule them"
        )

    if dense_params:
        if not train_config.HasField("dense_optimizer"):
            raise ValueError(
                f"the model has {len(dense_params)} dense parameter(s) but "
                "train_config has no dense_optimizer"
            )
        dense_cfg = train_config.dense_optimizer
        cls, kwargs = create_dense_optimizer(dense_cfg)
        part_classes, part_kwargs, patterns = create_part_optimizer(dense_cfg)
        remaining, groups = group_param_by_regex_pattern(dense_params, patterns)
        if remaining:
            main = keyed_optimizer(cls, kwargs, remaining)
            members.append(("dense", main))
            schedulers.append(create_scheduler(main, dense_cfg))
        parts, indices = build_part_optimizers(part_classes, part_kwargs, groups)
        members += [(f"part_{i}", opt) for i, opt in zip(indices, parts, strict=True)]
        schedulers += create_part_optim_schedulers(parts, dense_cfg, indices)

    if not members:
        raise ValueError("the model has no parameters to optimize")
    combined = CombinedOptimizer([opt for _, opt in members])
    stepped: KeyedOptimizer = combined
    if train_config.HasField("grad_clipping"):
        stepped = _clipping_optimizer(stepped, train_config.grad_clipping)
    ema = None
    if train_config.HasField("dense_optimizer") and train_config.dense_optimizer.HasField("ema"):
        if not dense_params:
            raise ValueError(
                "dense_optimizer has an ema but the model has no dense weights to average"
            )
        ema = DenseEMA.from_config(dense_params, train_config.dense_optimizer.ema)
        stepped = EMAOptimizer(stepped, ema)
    wrapper = TrainStepOptimizer.from_config(
        stepped, train_config, device if device is not None else _infer_device(model)
    )
    if wrapper.grad_scaler is not None and members[0][0] == "sparse":
        logger.warning(
            "grad_scaler is set: the fused sparse optimizer updates in backward from the "
            "scaled gradient (no unscale); prefer a scale-invariant sparse optimizer (Adagrad)"
        )
    logger.info("optimizers: %s", ", ".join(f"{k}={type(o).__name__}" for k, o in members))
    return TrainOptimizers(combined, schedulers, wrapper, members, ema)
