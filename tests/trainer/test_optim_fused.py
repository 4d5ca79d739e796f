"""Sparse optimizers fused into fbgemm's CPU kernels through torchrec DMP (gloo, world size 1)."""

from __future__ import annotations

import pytest
import torch
import torchrec

from rankboard.protos import optimizer_pb2, parse_text, train_pb2
from rankboard.trainer.optim import (
    CPU_SPARSE_OPTIMIZERS,
    apply_sparse_optimizer,
    build_optimizers,
    dense_named_parameters,
    set_initial_accumulator,
)
from tests.trainer.helpers import DIM, NUM_ROWS, SmallRanker, make_batch


def sparse(text: str) -> optimizer_pb2.SparseOptimizer:
    return parse_text(text, optimizer_pb2.SparseOptimizer())


def local(tensor: object) -> torch.Tensor:
    """The local data of a (single-shard) ShardedTensor."""
    return torch.cat([s.tensor for s in tensor.local_shards()])


def momentum1_tensors(fused_optimizer: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    out = {}
    for param_state in fused_optimizer.state.values():
        for key, state in param_state.items():
            if str(key).endswith("momentum1"):
                out[key] = torch.cat([s.tensor.flatten() for s in state.local_shards()])
    return out


def adagrad_train_config(value: float) -> train_pb2.TrainConfig:
    return parse_text(
        f"""
        sparse_optimizer {{ adagrad_optimizer {{ lr: 0.1 initial_accumulator_value: {value} }} }}
        dense_optimizer {{ sgd_optimizer {{ lr: 0.1 }} }}
        """,
        train_pb2.TrainConfig(),
    )


def test_tables_are_fused_and_dense_params_exclude_them(sharded_model) -> None:
    model = sharded_model(sparse("rowwise_adagrad_optimizer { lr: 0.1 }"))
    fused = model.fused_optimizer
    assert sorted(fused.params) == [
        "ebc.embedding_bags.t_item.weight",
        "ebc.embedding_bags.t_user.weight",
    ]
    assert sorted(dense_named_parameters(model)) == [
        "over.0.bias",
        "over.0.weight",
        "over.2.bias",
        "over.2.weight",
    ]


@pytest.mark.parametrize("name", CPU_SPARSE_OPTIMIZERS)
def test_every_cpu_sparse_optimizer_trains(sharded_model, name: str) -> None:
    model = sharded_model(sparse(f"{name} {{ lr: 0.5 }}"))
    before = {k: local(v).clone() for k, v in model.fused_optimizer.params.items()}
    kjt, labels = make_batch(8, torch.Generator().manual_seed(1))
    torch.nn.functional.binary_cross_entropy_with_logits(model(kjt), labels).backward()
    after = model.fused_optimizer.params
    assert all(not torch.equal(before[k], local(after[k])) for k in before)


def test_initial_accumulator_is_in_state_and_used_by_the_kernel(sharded_model) -> None:
    lr, value = 0.1, 0.1
    model = sharded_model(sparse(f"adagrad_optimizer {{ lr: {lr} }}"))
    opts = build_optimizers(model, adagrad_train_config(value))
    state = momentum1_tensors(model.fused_optimizer)
    assert len(state) == 2
    for tensor in state.values():
        assert torch.allclose(tensor, torch.full_like(tensor, value))

    # one sample (user 3, item 5): exact Adagrad whose accumulator starts at `value`
    params = model.fused_optimizer.params
    user0 = local(params["ebc.embedding_bags.t_user.weight"])[3].clone()
    item0 = local(params["ebc.embedding_bags.t_item.weight"])[5].clone()
    x = torch.cat([user0, item0]).requires_grad_()
    model.module.over(x).sum().backward()
    g = x.grad[:DIM]

    kjt = torchrec.KeyedJaggedTensor.from_lengths_sync(
        keys=["user", "item"], values=torch.tensor([3, 5]), lengths=torch.ones(2, dtype=torch.int64)
    )
    opts.zero_grad()
    model(kjt).sum().backward()
    user1 = local(params["ebc.embedding_bags.t_user.weight"])[3]
    expected = user0 - lr * g / (torch.sqrt(value + g * g) + 1e-8)
    assert torch.allclose(user1, expected, atol=1e-6)
    assert not torch.allclose(user1, user0 - lr * g / (g.abs() + 1e-8), atol=1e-4)
    acc = momentum1_tensors(model.fused_optimizer)
    user_acc = acc[next(k for k in acc if "t_user" in k)].view(NUM_ROWS, DIM)
    assert torch.allclose(user_acc[3], value + g * g)
    assert torch.allclose(user_acc[4], torch.full((DIM,), value))


def test_two_models_in_one_process_keep_their_own_initial_accumulator(sharded_model) -> None:
    a = sharded_model(sparse("adagrad_optimizer { lr: 0.1 }"))
    b = sharded_model(sparse("adagrad_optimizer { lr: 0.1 }"))
    build_optimizers(a, adagrad_train_config(0.1))
    build_optimizers(b, adagrad_train_config(0.5))
    for model, value in ((a, 0.1), (b, 0.5)):
        for tensor in momentum1_tensors(model.fused_optimizer).values():
            assert torch.allclose(tensor, torch.full_like(tensor, value))


def test_zero_initial_accumulator_leaves_state_at_zero(sharded_model) -> None:
    model = sharded_model(sparse("adagrad_optimizer { lr: 0.1 }"))
    build_optimizers(model, adagrad_train_config(0.0))
    for tensor in momentum1_tensors(model.fused_optimizer).values():
        assert not tensor.any()


def test_set_initial_accumulator_rejects_negative(sharded_model) -> None:
    model = sharded_model(sparse("adagrad_optimizer { lr: 0.1 }"))
    with pytest.raises(ValueError, match="initial_accumulator_value must be >= 0"):
        set_initial_accumulator(model.fused_optimizer, -1.0)


@pytest.mark.parametrize(
    "name",
    [
        "adam_optimizer",
        "lars_sgd_optimizer",
        "lamb_optimizer",
        "partial_rowwise_lamb_optimizer",
        "partial_rowwise_adam_optimizer",
    ],
)
def test_unsupported_cpu_optimizers_fail_at_build_time(name: str) -> None:
    with pytest.raises(
        ValueError,
        match=r"no fbgemm CPU kernel.*sgd_optimizer, adagrad_optimizer, "
        r"rowwise_adagrad_optimizer",
    ):
        apply_sparse_optimizer(SmallRanker(), sparse(f"{name} {{ lr: 0.1 }}"), "cpu")


def test_sparse_optimizer_without_sharding_is_an_error() -> None:
    model = SmallRanker(device="cpu")
    cfg = adagrad_train_config(0.1)
    with pytest.raises(ValueError, match="call apply_sparse_optimizer"):
        build_optimizers(model, cfg)
    apply_sparse_optimizer(model, cfg.sparse_optimizer, "cpu")
    with pytest.raises(ValueError, match="DistributedModelParallel"):
        build_optimizers(model, cfg)


def test_model_without_embedding_bag_collection_is_an_error() -> None:
    with pytest.raises(ValueError, match="no EmbeddingBagCollection"):
        apply_sparse_optimizer(torch.nn.Linear(2, 1), sparse("sgd_optimizer { lr: 0.1 }"), "cpu")


def test_scheduled_sparse_lr_reaches_the_kernel_and_frozen_dense_stays(sharded_model) -> None:
    cfg = parse_text(
        """
        sparse_optimizer {
            sgd_optimizer { lr: 1.0 }
            exponential_decay_learning_rate { decay_size: 1 decay_factor: 0.5 }
        }
        dense_optimizer { sgd_optimizer { lr: 0.0 } }
        """,
        train_pb2.TrainConfig(),
    )
    model = sharded_model(cfg.sparse_optimizer)
    opts = build_optimizers(model, cfg)
    dense_before = [p.detach().clone() for p in dense_named_parameters(model).values()]
    kjt = torchrec.KeyedJaggedTensor.from_lengths_sync(
        keys=["user", "item"], values=torch.tensor([2, 6]), lengths=torch.ones(2, dtype=torch.int64)
    )
    table = model.fused_optimizer.params["ebc.embedding_bags.t_user.weight"]
    items = model.fused_optimizer.params["ebc.embedding_bags.t_item.weight"]
    for lr in (1.0, 0.5, 0.25):
        user0, item0 = local(table)[2].clone(), local(items)[6].clone()
        x = torch.cat([user0, item0]).requires_grad_()
        model.module.over(x).sum().backward()
        opts.zero_grad()
        model(kjt).sum().backward()
        assert torch.allclose(local(table)[2], user0 - lr * x.grad[:DIM], atol=1e-6), lr
        assert opts.step()
    after = list(dense_named_parameters(model).values())
    assert all(torch.equal(a, b) for a, b in zip(after, dense_before, strict=True))
