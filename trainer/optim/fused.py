"""Sparse optimizers fused into fbgemm's embedding kernels by torchrec.

The flow is the one torchrec expects:

1. build the model (its ``EmbeddingBagCollection`` s may live on the meta device);
2. :func:`apply_sparse_optimizer` attaches the sparse optimizer to the
   embedding tables (``apply_optimizer_in_backward``), checking that fbgemm
   has a kernel for it on ``device``;
3. shard with ``DistributedModelParallel`` (:func:`table_wise_sharding_plan`
   keeps tiny tables from being planned as data parallel, which would not fuse);
4. :func:`set_initial_accumulator` fills Adagrad's accumulator state of the
   fused tables before the first step (fbgemm always starts it at zero).

Example (no sharding needed to attach the optimizer)::

    >>> import torch, torchrec
    >>> from rankboard.protos import optimizer_pb2, parse_text
    >>> ebc = torchrec.EmbeddingBagCollection(tables=[torchrec.EmbeddingBagConfig(
    ...     name="t", embedding_dim=4, num_embeddings=8, feature_names=["f"])],
    ...     device=torch.device("meta"))
    >>> cfg = parse_text("rowwise_adagrad_optimizer { lr: 0.1 }", optimizer_pb2.SparseOptimizer())
    >>> apply_sparse_optimizer(ebc, cfg, "cpu")
    ['embedding_bags.t.weight']
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import torch
from torch import nn
from torch.distributed.optim import _apply_optimizer_in_backward
from torchrec.distributed.sharding_plan import construct_module_sharding_plan, table_wise
from torchrec.distributed.types import ShardingPlan
from torchrec.modules.embedding_modules import EmbeddingBagCollection
from torchrec.optim.optimizers import in_backward_optimizer_filter

from rankboard.protos import optimizer_pb2
from rankboard.trainer.optim.builder import (
    check_sparse_optimizer_device,
    create_sparse_optimizer,
)

__all__ = [
    "apply_sparse_optimizer",
    "dense_named_parameters",
    "set_initial_accumulator",
    "table_wise_sharding_plan",
]

logger = logging.getLogger(__name__)


def _embedding_bag_collections(model: nn.Module) -> Iterator[tuple[str, EmbeddingBagCollection]]:
    for name, module in model.named_modules():
        if isinstance(module, EmbeddingBagCollection):
            yield name, module


def apply_sparse_optimizer(
    model: nn.Module, sparse_cfg: optimizer_pb2.SparseOptimizer, device: torch.device | str
) -> list[str]:
    """Attach ``sparse_cfg``'s fused optimizer to every EmbeddingBagCollection of ``model``.

    Call before sharding. Raises ValueError when fbgemm has no kernel for the
    optimizer on ``device`` (on CPU: exact SGD, Adagrad, row-wise Adagrad only)
    or when the model has no EmbeddingBagCollection. Returns the names of the
    parameters that now update in backward.
    """
    check_sparse_optimizer_device(sparse_cfg, device)
    cls, kwargs = create_sparse_optimizer(sparse_cfg)
    names: list[str] = []
    for prefix, ebc in _embedding_bag_collections(model):
        params = list(ebc.named_parameters())
        _apply_optimizer_in_backward(cls, [p for _, p in params], dict(kwargs))
        names += [f"{prefix}.{n}" if prefix else n for n, _ in params]
    if not names:
        raise ValueError("model has no EmbeddingBagCollection to apply the sparse optimizer to")
    logger.info("sparse %s applied in backward to %s", cls.__name__, ", ".join(names))
    return names


def dense_named_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """The parameters of ``model`` not updated in backward by a fused optimizer.

    >>> import torch
    >>> list(dense_named_parameters(torch.nn.Linear(2, 1)))
    ['weight', 'bias']
    """
    return dict(in_backward_optimizer_filter(model.named_parameters(), include=False))


def table_wise_sharding_plan(
    model: nn.Module, device: torch.device | str, world_size: int = 1
) -> ShardingPlan:
    """A plan that shards every table of every EmbeddingBagCollection table-wise.

    torchrec's planner puts small tables in data-parallel sharding, where the
    optimizer is not fused into the kernel; table-wise sharding always fuses.
    Tables are spread round-robin over ``world_size`` ranks.

    >>> import torch, torchrec
    >>> model = torch.nn.Module()
    >>> model.ebc = torchrec.EmbeddingBagCollection(tables=[torchrec.EmbeddingBagConfig(
    ...     name="t", embedding_dim=4, num_embeddings=8, feature_names=["f"])],
    ...     device=torch.device("meta"))
    >>> plan = table_wise_sharding_plan(model, "cpu")
    >>> {table: spec.sharding_type for table, spec in plan.plan["ebc"].items()}
    {'t': 'table_wise'}
    """
    device_type = torch.device(device).type
    plan = {}
    table = 0
    for name, ebc in _embedding_bag_collections(model):
        per_table = {}
        for config in ebc.embedding_bag_configs():
            per_table[config.name] = table_wise(rank=table % world_size)
            table += 1
        plan[name] = construct_module_sharding_plan(
            ebc, per_table, local_size=world_size, world_size=world_size, device_type=device_type
        )
    return ShardingPlan(plan)


def _local_tensors(state: object) -> Iterator[torch.Tensor]:
    local_shards = getattr(state, "local_shards", None)
    if callable(local_shards):  # ShardedTensor
        for shard in local_shards():
            yield shard.tensor
    elif isinstance(state, torch.Tensor):
        yield state


def set_initial_accumulator(fused_optimizer: torch.optim.Optimizer, value: float) -> int:
    """Fill the Adagrad accumulators (``momentum1``) of fused tables with ``value``.

    fbgemm starts them at 0 and has no argument for it; the fused optimizer's
    state tensors are views of the kernel's own buffers, so filling them in
    place before the first step is what ``initial_accumulator_value`` means.
    Call it before loading a checkpoint, never after. Returns the number of
    tensors filled (0 means the optimizer holds no momentum1 state).

    >>> import torch
    >>> w = torch.nn.Parameter(torch.zeros(2))
    >>> opt = torch.optim.SGD([w], lr=0.1)
    >>> opt.state[w]["t.momentum1"] = torch.zeros(2)  # as a fused Adagrad table holds it
    >>> set_initial_accumulator(opt, 0.1), opt.state[w]["t.momentum1"].tolist()
    (1, [0.10000000149011612, 0.10000000149011612])
    """
    if value < 0:
        raise ValueError(f"initial_accumulator_value must be >= 0, got {value}")
    filled = 0
    with torch.no_grad():
        for param_state in fused_optimizer.state.values():
            for key, state in param_state.items():
                if not str(key).endswith("momentum1"):
                    continue
                for tensor in _local_tensors(state):
                    tensor.fill_(value)
                    filled += 1
    logger.info("initial accumulator %g set on %d fused state tensor(s)", value, filled)
    return filled
