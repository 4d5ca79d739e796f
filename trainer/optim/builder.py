"""Optimizer classes, kwargs and schedulers from tzrec optimizer config messages.

These functions keep tzrec's public names and return ``(class, kwargs)`` pairs
rather than optimizer objects, so that the sparse pair can be handed to
``apply_optimizer_in_backward`` before sharding and the dense pairs built later.

Example::

    >>> from rankboard.protos import optimizer_pb2, parse_text
    >>> cfg = parse_text("adam_optimizer { lr: 0.01 beta1: 0.8 }", optimizer_pb2.DenseOptimizer())
    >>> cls, kwargs = create_dense_optimizer(cfg)
    >>> cls.__name__, kwargs["lr"], kwargs["betas"]
    ('Adam', 0.01, (0.8, 0.999))
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from functools import partial
from typing import Any

import torch
import torchrec
from google.protobuf.message import Message
from torch import nn
from torchrec.optim import optimizers as trec_optim
from torchrec.optim.keyed import KeyedOptimizerWrapper
from torchrec.optim.rowwise_adagrad import RowWiseAdagrad

from rankboard.protos import optimizer_pb2
from rankboard.trainer.optim.lr_scheduler import SCHEDULERS, BaseLR, ConstantLR

try:  # fbgemm_gpu >= 1.x keeps the enum in tbe.config; older ones in ..._ops_common
    from fbgemm_gpu.tbe.config import WeightDecayMode
except ImportError:  # pragma: no cover - depends on the installed fbgemm
    from fbgemm_gpu.split_table_batched_embeddings_ops_common import WeightDecayMode

__all__ = [
    "CPU_SPARSE_OPTIMIZERS",
    "build_part_optimizers",
    "check_sparse_optimizer_device",
    "config_to_kwargs",
    "create_dense_optimizer",
    "create_part_optim_schedulers",
    "create_part_optimizer",
    "create_scheduler",
    "create_sparse_optimizer",
    "group_param_by_regex_pattern",
    "keyed_optimizer",
    "sparse_initial_accumulator_value",
]

logger = logging.getLogger(__name__)

OptimizerClass = type[torch.optim.Optimizer]

_SPARSE_CLASSES: dict[str, OptimizerClass] = {
    "sgd_optimizer": trec_optim.SGD,
    "adagrad_optimizer": trec_optim.Adagrad,
    "adam_optimizer": trec_optim.Adam,
    "lars_sgd_optimizer": trec_optim.LarsSGD,
    "lamb_optimizer": trec_optim.LAMB,
    "partial_rowwise_lamb_optimizer": trec_optim.PartialRowWiseLAMB,
    "partial_rowwise_adam_optimizer": trec_optim.PartialRowWiseAdam,
    "rowwise_adagrad_optimizer": RowWiseAdagrad,
}
# Fused optimizers that a newer torchrec may provide, by the names it may use.
_SPARSE_OPTIONAL: dict[str, tuple[str, ...]] = {
    "adadelta_optimizer": ("Adadelta", "AdaDelta"),
    "rmsprop_optimizer": ("RMSprop", "RMSProp"),
}

CPU_SPARSE_OPTIMIZERS: tuple[str, ...] = (
    "sgd_optimizer",
    "adagrad_optimizer",
    "rowwise_adagrad_optimizer",
)
"""Sparse oneofs that fbgemm's CPU kernels implement (exact SGD, Adagrad, row-wise Adagrad)."""

_DENSE_CLASSES: dict[str, OptimizerClass] = {
    "sgd_optimizer": torch.optim.SGD,
    "adagrad_optimizer": torch.optim.Adagrad,
    "adam_optimizer": torch.optim.Adam,
    "adamw_optimizer": torch.optim.AdamW,
    "adadelta_optimizer": torch.optim.Adadelta,
    "rmsprop_optimizer": torch.optim.RMSprop,
}


def _f32(value: float) -> float:
    return float(f"{value:.7g}")


def config_to_kwargs(msg: Message) -> dict[str, Any]:
    """Every scalar/repeated field of ``msg``, set or defaulted, by field name.

    Optional fields without a default (``fused``) are included only when set.
    ``float`` fields (float32 on the wire) are read back as their 7-significant-digit
    decimal, so ``lr: 0.1`` gives ``0.1`` rather than ``0.10000000149011612``.

    >>> from rankboard.protos import optimizer_pb2
    >>> sorted(config_to_kwargs(optimizer_pb2.FusedSGDOptimizer()))
    ['gradient_clipping', 'lr', 'max_gradient']
    """
    out: dict[str, Any] = {}
    for field in msg.DESCRIPTOR.fields:
        value = getattr(msg, field.name)
        if field.type == field.TYPE_FLOAT:
            value = [_f32(v) for v in value] if field.is_repeated else _f32(value)
        if field.is_repeated:
            out[field.name] = list(value)
        elif field.has_presence and not field.has_default_value and not msg.HasField(field.name):
            continue
        else:
            out[field.name] = value
    return out


def _which(cfg: Message, oneof: str, what: str) -> str:
    name = cfg.WhichOneof(oneof)
    if name is None:
        raise ValueError(f"{what} config has no {oneof} set: choose one of its {oneof} fields")
    return name


def create_sparse_optimizer(cfg: optimizer_pb2.SparseOptimizer) -> tuple[OptimizerClass, dict]:
    """The torchrec fused optimizer class and its fbgemm kwargs for ``cfg``.

    The kwargs are those of fbgemm's table-batched embedding kernel (torchrec
    renames ``lr`` to ``learning_rate``): ``beta1``/``beta2`` stay separate
    floats because that is what fbgemm takes, and ``weight_decay_mode`` becomes
    fbgemm's ``WeightDecayMode``. Adagrad's ``initial_accumulator_value`` is no
    kernel argument; see :func:`sparse_initial_accumulator_value`.

    >>> from rankboard.protos import optimizer_pb2, parse_text
    >>> cfg = parse_text("rowwise_adagrad_optimizer { lr: 0.5 weight_decay_mode: L2 }",
    ...                  optimizer_pb2.SparseOptimizer())
    >>> cls, kwargs = create_sparse_optimizer(cfg)
    >>> cls.__name__, kwargs["lr"], kwargs["weight_decay_mode"].name
    ('RowWiseAdagrad', 0.5, 'L2')
    """
    name = _which(cfg, "optimizer", "SparseOptimizer")
    kwargs = config_to_kwargs(getattr(cfg, name))
    if name in _SPARSE_OPTIONAL:
        candidates = _SPARSE_OPTIONAL[name]
        found = [c for c in candidates if hasattr(trec_optim, c)]
        if not found:
            raise ValueError(
                f"sparse {name} is not supported: the installed torchrec "
                f"{torchrec.__version__} has no fused {candidates[0]} optimizer "
                f"(torchrec.optim.optimizers.{candidates[0]}); choose one of "
                f"{', '.join(_SPARSE_CLASSES)}"
            )
        return getattr(trec_optim, found[0]), kwargs
    kwargs.pop("initial_accumulator_value", None)
    if "weight_decay_mode" in kwargs:
        kwargs["weight_decay_mode"] = WeightDecayMode(kwargs["weight_decay_mode"])
    return _SPARSE_CLASSES[name], kwargs


def sparse_initial_accumulator_value(cfg: optimizer_pb2.SparseOptimizer) -> float | None:
    """Adagrad's ``initial_accumulator_value`` when ``cfg`` is a sparse Adagrad, else None.

    >>> from rankboard.protos import optimizer_pb2, parse_text
    >>> cfg = parse_text("adagrad_optimizer { lr: 0.1 initial_accumulator_value: 0.25 }",
    ...                  optimizer_pb2.SparseOptimizer())
    >>> sparse_initial_accumulator_value(cfg)
    0.25
    """
    if cfg.WhichOneof("optimizer") != "adagrad_optimizer":
        return None
    return _f32(cfg.adagrad_optimizer.initial_accumulator_value)


def check_sparse_optimizer_device(
    cfg: optimizer_pb2.SparseOptimizer, device: torch.device | str
) -> None:
    """Raise ValueError if fbgemm has no kernel for ``cfg``'s optimizer on ``device``.

    On CPU only exact SGD, Adagrad and row-wise Adagrad exist; CUDA takes them all.

    >>> from rankboard.protos import optimizer_pb2, parse_text
    >>> cfg = parse_text("adam_optimizer { lr: 0.1 }", optimizer_pb2.SparseOptimizer())
    >>> check_sparse_optimizer_device(cfg, "cuda")
    >>> check_sparse_optimizer_device(cfg, "cpu")
    Traceback (most recent call last):
    ...
    ValueError: sparse adam_optimizer has no fbgemm CPU kernel; ...
    """
    name = _which(cfg, "optimizer", "SparseOptimizer")
    if torch.device(device).type == "cpu" and name not in CPU_SPARSE_OPTIMIZERS:
        raise ValueError(
            f"sparse {name} has no fbgemm CPU kernel; on CPU the fused sparse optimizers "
            f"are {', '.join(CPU_SPARSE_OPTIMIZERS)} (exact SGD, Adagrad, row-wise Adagrad). "
            "Train on CUDA or choose one of those."
        )


def create_dense_optimizer(
    cfg: optimizer_pb2.DenseOptimizer | optimizer_pb2.PartOptimizer,
) -> tuple[OptimizerClass, dict]:
    """The ``torch.optim`` class and kwargs for a dense (or part) optimizer config.

    ``beta1``/``beta2`` become ``betas``; ``fused`` is passed only when true
    (tzrec passes its default ``false``, which torch treats as unset),
    ``dampening`` only with momentum and ``nesterov`` only when true.

    >>> from rankboard.protos import optimizer_pb2, parse_text
    >>> cfg = parse_text("sgd_optimizer { lr: 0.1 momentum: 0 }", optimizer_pb2.DenseOptimizer())
    >>> create_dense_optimizer(cfg)[1]
    {'lr': 0.1, 'momentum': 0.0, 'weight_decay': 0.0}
    """
    name = _which(cfg, "optimizer", type(cfg).__name__)
    kwargs = config_to_kwargs(getattr(cfg, name))
    if "beta1" in kwargs:
        kwargs["betas"] = (kwargs.pop("beta1"), kwargs.pop("beta2"))
    if not kwargs.get("fused", True):
        kwargs.pop("fused")
    if name == "sgd_optimizer":
        if kwargs["momentum"] == 0:
            kwargs.pop("dampening")
        if not kwargs["nesterov"]:
            kwargs.pop("nesterov")
    return _DENSE_CLASSES[name], kwargs


def group_param_by_regex_pattern(
    params: Mapping[str, nn.Parameter], patterns: Sequence[str]
) -> tuple[dict[str, nn.Parameter], list[dict[str, nn.Parameter]]]:
    """Split ``params`` by the first pattern that ``re.fullmatch``-es each name.

    Returns the unmatched parameters (they stay with the main optimizer, and
    are logged) and one dict per pattern.

    >>> import torch
    >>> p = {n: torch.nn.Parameter(torch.zeros(1)) for n in ("a.w", "b.w", "c.w")}
    >>> rest, parts = group_param_by_regex_pattern(p, ["a.*", "(a|b).*"])
    >>> list(rest), [list(d) for d in parts]
    (['c.w'], [['a.w'], ['b.w']])
    """
    compiled = [re.compile(p) for p in patterns]
    remaining: dict[str, nn.Parameter] = {}
    groups: list[dict[str, nn.Parameter]] = [{} for _ in compiled]
    for name, param in params.items():
        for i, pattern in enumerate(compiled):
            if pattern.fullmatch(name):
                groups[i][name] = param
                break
        else:
            remaining[name] = param
    for text, group in zip(patterns, groups, strict=True):
        if not group:
            logger.warning("part optimizer pattern %r matches no parameter", text)
    if compiled and remaining:
        logger.info(
            "%d parameter(s) match no part optimizer and use the main dense optimizer: %s",
            len(remaining),
            ", ".join(remaining),
        )
    return remaining, groups


def create_part_optimizer(
    cfg: optimizer_pb2.DenseOptimizer,
) -> tuple[list[OptimizerClass], list[dict], list[str]]:
    """Classes, kwargs and regex patterns of ``cfg.part_optimizers``, in order.

    >>> from rankboard.protos import optimizer_pb2, parse_text
    >>> cfg = parse_text('adam_optimizer { lr: 0.1 } part_optimizers { sgd_optimizer { lr: 1 } '
    ...                  'regex_pattern: "mlp.*" }', optimizer_pb2.DenseOptimizer())
    >>> classes, _, patterns = create_part_optimizer(cfg)
    >>> [c.__name__ for c in classes], patterns
    (['SGD'], ['mlp.*'])
    """
    classes, kwargs_list, patterns = [], [], []
    for part in cfg.part_optimizers:
        cls, kwargs = create_dense_optimizer(part)
        classes.append(cls)
        kwargs_list.append(kwargs)
        patterns.append(part.regex_pattern)
    return classes, kwargs_list, patterns


def _make_optimizer(cls: OptimizerClass, kwargs: dict, params: Any) -> torch.optim.Optimizer:
    return cls(params, **kwargs)


def keyed_optimizer(
    cls: OptimizerClass, kwargs: dict, params: Mapping[str, nn.Parameter]
) -> KeyedOptimizerWrapper:
    """A torchrec ``KeyedOptimizerWrapper`` of ``cls(**kwargs)`` over named ``params``.

    >>> import torch
    >>> params = {"w": torch.nn.Parameter(torch.zeros(2))}
    >>> opt = keyed_optimizer(torch.optim.SGD, {"lr": 0.1}, params)
    >>> list(opt.params), opt.param_groups[0]["lr"]
    (['w'], 0.1)
    """
    return KeyedOptimizerWrapper(dict(params), partial(_make_optimizer, cls, kwargs))


def build_part_optimizers(
    classes: Sequence[OptimizerClass],
    kwargs: Sequence[dict],
    params_list: Sequence[Mapping[str, nn.Parameter]],
) -> tuple[list[KeyedOptimizerWrapper], list[int]]:
    """Keyed optimizers for the non-empty parameter groups, and those groups' indices.

    >>> import torch
    >>> p = {"w": torch.nn.Parameter(torch.zeros(1))}
    >>> opts, idx = build_part_optimizers([torch.optim.SGD] * 2, [{"lr": 0.1}] * 2, [{}, p])
    >>> len(opts), idx
    (1, [1])
    """
    optimizers, indices = [], []
    for i, (cls, kw, params) in enumerate(zip(classes, kwargs, params_list, strict=True)):
        if params:
            optimizers.append(keyed_optimizer(cls, kw, params))
            indices.append(i)
    return optimizers, indices


def create_scheduler(optimizer: torch.optim.Optimizer, optim_cfg: Message) -> BaseLR:
    """The scheduler of ``optim_cfg``'s ``learning_rate`` oneof (ConstantLR when unset).

    >>> import torch
    >>> from rankboard.protos import optimizer_pb2, parse_text
    >>> cfg = parse_text("sgd_optimizer { lr: 1 } cosine_annealing_learning_rate { T_max: 10 }",
    ...                  optimizer_pb2.DenseOptimizer())
    >>> opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    >>> type(create_scheduler(opt, cfg)).__name__
    'CosineAnnealingLR'
    """
    name = optim_cfg.WhichOneof("learning_rate")
    if name is None:
        return ConstantLR(optimizer)
    lr_cfg = getattr(optim_cfg, name)
    cls = SCHEDULERS.get(type(lr_cfg).__name__)
    if cls is None:
        raise ValueError(f"no scheduler registered for {type(lr_cfg).__name__} ({name})")
    return cls(optimizer, **config_to_kwargs(lr_cfg))


def create_part_optim_schedulers(
    part_optimizers: Sequence[torch.optim.Optimizer],
    cfg: optimizer_pb2.DenseOptimizer,
    part_optim_indices: Sequence[int],
) -> list[BaseLR]:
    """One scheduler per part optimizer; a part without a learning_rate inherits ``cfg``'s.

    >>> import torch
    >>> from rankboard.protos import optimizer_pb2, parse_text
    >>> cfg = parse_text('sgd_optimizer { lr: 0.1 } constant_learning_rate {} part_optimizers { '
    ...                  'sgd_optimizer { lr: 1 } regex_pattern: "x" }',
    ...                  optimizer_pb2.DenseOptimizer())
    >>> opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    >>> [type(s).__name__ for s in create_part_optim_schedulers([opt], cfg, [0])]
    ['ConstantLR']
    """
    schedulers = []
    for optimizer, index in zip(part_optimizers, part_optim_indices, strict=True):
        part = cfg.part_optimizers[index]
        source = part if part.WhichOneof("learning_rate") else cfg
        schedulers.append(create_scheduler(optimizer, source))
    return schedulers
