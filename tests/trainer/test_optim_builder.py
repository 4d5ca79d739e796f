"""Config -> (optimizer class, kwargs) mappings, regex parts and their schedulers."""

from __future__ import annotations

import inspect
import logging

import pytest
import torch
import torchrec
from fbgemm_gpu.split_table_batched_embeddings_ops_training import (
    SplitTableBatchedEmbeddingBagsCodegen,
)
from fbgemm_gpu.tbe.config import WeightDecayMode
from torchrec.distributed.utils import optimizer_type_to_emb_opt_type
from torchrec.optim import optimizers as trec_optim
from torchrec.optim.keyed import KeyedOptimizerWrapper
from torchrec.optim.rowwise_adagrad import RowWiseAdagrad

from rankboard.protos import optimizer_pb2, parse_text
from rankboard.trainer.optim import (
    ConstantLR,
    ExponentialDecayLR,
    ManualStepLR,
    build_part_optimizers,
    check_sparse_optimizer_device,
    create_dense_optimizer,
    create_part_optim_schedulers,
    create_part_optimizer,
    create_sparse_optimizer,
    group_param_by_regex_pattern,
    sparse_initial_accumulator_value,
)

TBE_ARGS = set(inspect.signature(SplitTableBatchedEmbeddingBagsCodegen.__init__).parameters)

SPARSE = [
    (
        "sgd_optimizer { lr: 0.1 gradient_clipping: true max_gradient: 2 }",
        trec_optim.SGD,
        {"lr": 0.1, "gradient_clipping": True, "max_gradient": 2.0},
    ),
    (
        "adagrad_optimizer { lr: 0.1 initial_accumulator_value: 0.3 }",
        trec_optim.Adagrad,
        {"lr": 0.1, "gradient_clipping": False, "max_gradient": 1.0},
    ),
    (
        "adam_optimizer { lr: 0.1 beta1: 0.8 beta2: 0.99 weight_decay: 0.01 }",
        trec_optim.Adam,
        {
            "lr": 0.1,
            "beta1": 0.8,
            "beta2": 0.99,
            "weight_decay": 0.01,
            "gradient_clipping": False,
            "max_gradient": 1.0,
        },
    ),
    (
        "lars_sgd_optimizer { lr: 0.1 momentum: 0.5 }",
        trec_optim.LarsSGD,
        {
            "lr": 0.1,
            "momentum": 0.5,
            "weight_decay": 0.0,
            "gradient_clipping": False,
            "max_gradient": 1.0,
        },
    ),
    (
        "lamb_optimizer { lr: 0.1 beta1: 0.7 }",
        trec_optim.LAMB,
        {
            "lr": 0.1,
            "beta1": 0.7,
            "beta2": 0.999,
            "weight_decay": 0.0,
            "gradient_clipping": False,
            "max_gradient": 1.0,
        },
    ),
    (
        "partial_rowwise_lamb_optimizer { lr: 0.1 }",
        trec_optim.PartialRowWiseLAMB,
        {
            "lr": 0.1,
            "beta1": 0.9,
            "beta2": 0.999,
            "weight_decay": 0.0,
            "gradient_clipping": False,
            "max_gradient": 1.0,
        },
    ),
    (
        "partial_rowwise_adam_optimizer { lr: 0.1 beta2: 0.9 }",
        trec_optim.PartialRowWiseAdam,
        {
            "lr": 0.1,
            "beta1": 0.9,
            "beta2": 0.9,
            "weight_decay": 0.0,
            "gradient_clipping": False,
            "max_gradient": 1.0,
        },
    ),
    (
        "rowwise_adagrad_optimizer { lr: 0.1 weight_decay: 0.1 weight_decay_mode: DECOUPLE }",
        RowWiseAdagrad,
        {
            "lr": 0.1,
            "weight_decay": 0.1,
            "weight_decay_mode": WeightDecayMode.DECOUPLE,
            "gradient_clipping": False,
            "max_gradient": 1.0,
        },
    ),
]


def sparse(text: str) -> optimizer_pb2.SparseOptimizer:
    return parse_text(text, optimizer_pb2.SparseOptimizer())


def dense(text: str) -> optimizer_pb2.DenseOptimizer:
    return parse_text(text, optimizer_pb2.DenseOptimizer())


@pytest.mark.parametrize(("text", "cls", "kwargs"), SPARSE)
def test_sparse_oneof_maps_to_torchrec_class_and_fbgemm_kwargs(text, cls, kwargs) -> None:
    got_cls, got = create_sparse_optimizer(sparse(text))
    assert got_cls is cls
    assert got == kwargs
    # torchrec knows the class, and fbgemm's kernel takes every kwarg (lr is renamed)
    assert optimizer_type_to_emb_opt_type(got_cls) is not None
    assert {"learning_rate" if k == "lr" else k for k in got} <= TBE_ARGS


def test_every_sparse_oneof_is_covered() -> None:
    oneof = optimizer_pb2.SparseOptimizer.DESCRIPTOR.oneofs_by_name["optimizer"]
    covered = {text.split()[0] for text, _, _ in SPARSE}
    assert {f.name for f in oneof.fields} == covered | {"adadelta_optimizer", "rmsprop_optimizer"}


def test_weight_decay_mode_is_fbgemm_enum() -> None:
    for mode in ("NONE", "L2", "DECOUPLE"):
        _, kwargs = create_sparse_optimizer(
            sparse(f"rowwise_adagrad_optimizer {{ lr: 1 weight_decay_mode: {mode} }}")
        )
        assert kwargs["weight_decay_mode"] is WeightDecayMode[mode]


@pytest.mark.parametrize(
    ("name", "cls_name"), [("adadelta_optimizer", "Adadelta"), ("rmsprop_optimizer", "RMSprop")]
)
def test_adadelta_rmsprop_need_a_newer_torchrec(name: str, cls_name: str) -> None:
    cfg = sparse(f"{name} {{ lr: 0.1 }}")
    if hasattr(trec_optim, cls_name):  # pragma: no cover - a newer torchrec
        assert create_sparse_optimizer(cfg)[0] is getattr(trec_optim, cls_name)
        return
    with pytest.raises(ValueError, match=f"installed torchrec {torchrec.__version__}.*{cls_name}"):
        create_sparse_optimizer(cfg)


def test_empty_oneof_is_an_error() -> None:
    with pytest.raises(ValueError, match="SparseOptimizer config has no optimizer set"):
        create_sparse_optimizer(optimizer_pb2.SparseOptimizer())
    with pytest.raises(ValueError, match="DenseOptimizer config has no optimizer set"):
        create_dense_optimizer(optimizer_pb2.DenseOptimizer())


def test_initial_accumulator_value_only_for_adagrad() -> None:
    assert (
        sparse_initial_accumulator_value(
            sparse("adagrad_optimizer { lr: 1 initial_accumulator_value: 0.1 }")
        )
        == 0.1
    )
    assert sparse_initial_accumulator_value(sparse("sgd_optimizer { lr: 1 }")) is None


def test_device_check_cpu_versus_cuda() -> None:
    for text, _, _ in SPARSE:
        cfg = sparse(text)
        check_sparse_optimizer_device(cfg, torch.device("cuda"))  # all pass through
        name = text.split()[0]
        if name in ("sgd_optimizer", "adagrad_optimizer", "rowwise_adagrad_optimizer"):
            check_sparse_optimizer_device(cfg, "cpu")
        else:
            with pytest.raises(ValueError, match=f"sparse {name} has no fbgemm CPU kernel"):
                check_sparse_optimizer_device(cfg, "cpu")


DENSE = [
    (
        "sgd_optimizer { lr: 0.1 }",
        torch.optim.SGD,
        {"lr": 0.1, "momentum": 0.9, "weight_decay": 0.0, "dampening": 0.0},
    ),
    (
        "sgd_optimizer { lr: 0.1 momentum: 0 }",
        torch.optim.SGD,
        {"lr": 0.1, "momentum": 0.0, "weight_decay": 0.0},
    ),
    (
        "sgd_optimizer { lr: 0.1 nesterov: true fused: false }",
        torch.optim.SGD,
        {
            "lr": 0.1,
            "momentum": 0.9,
            "weight_decay": 0.0,
            "dampening": 0.0,
            "nesterov": True,
        },
    ),
    (
        "adagrad_optimizer { lr: 0.1 initial_accumulator_value: 0.2 }",
        torch.optim.Adagrad,
        {"lr": 0.1, "weight_decay": 0.0, "initial_accumulator_value": 0.2, "eps": 1e-10},
    ),
    (
        "adam_optimizer { lr: 0.1 beta1: 0.8 amsgrad: true }",
        torch.optim.Adam,
        {"lr": 0.1, "betas": (0.8, 0.999), "weight_decay": 0.0, "eps": 1e-8, "amsgrad": True},
    ),
    (
        "adamw_optimizer { lr: 0.1 weight_decay: 0.01 fused: true }",
        torch.optim.AdamW,
        {
            "lr": 0.1,
            "betas": (0.9, 0.999),
            "weight_decay": 0.01,
            "eps": 1e-8,
            "amsgrad": False,
            "fused": True,
        },
    ),
    (
        "adadelta_optimizer { lr: 1 }",
        torch.optim.Adadelta,
        # tzrec's defaults (tzrec/protos/optimizer.proto AdadeltaOptimizer): rho 0.95
        {"lr": 1.0, "rho": 0.95, "eps": 1e-6, "weight_decay": 0.0},
    ),
    (
        "rmsprop_optimizer { lr: 0.01 centered: true }",
        torch.optim.RMSprop,
        {
            "lr": 0.01,
            "alpha": 0.99,
            "eps": 1e-8,
            "weight_decay": 0.0,
            "momentum": 0.0,
            "centered": True,
        },
    ),
]


@pytest.mark.parametrize(("text", "cls", "kwargs"), DENSE)
def test_dense_oneof_maps_to_torch_optim(text, cls, kwargs) -> None:
    got_cls, got = create_dense_optimizer(dense(text))
    assert got_cls is cls
    assert got == kwargs
    # the kwargs build a working optimizer
    param = torch.nn.Parameter(torch.ones(3))
    opt = got_cls([param], **got)
    param.sum().backward()
    opt.step()
    assert not torch.equal(param.detach(), torch.ones(3))


def test_part_optimizer_kwargs_skip_regex_pattern() -> None:
    cls, kwargs = create_dense_optimizer(
        parse_text('adam_optimizer { lr: 0.1 } regex_pattern: "x"', optimizer_pb2.PartOptimizer())
    )
    assert cls is torch.optim.Adam
    assert "regex_pattern" not in kwargs


def test_group_by_regex_first_match_wins_and_logs_unmatched(caplog) -> None:
    names = ["tower.0.weight", "tower.0.bias", "head.weight", "head.bias", "other.w"]
    params = {n: torch.nn.Parameter(torch.zeros(1)) for n in names}
    with caplog.at_level(logging.INFO, logger="rankboard.trainer.optim.builder"):
        rest, groups = group_param_by_regex_pattern(
            params, [r".*\.bias", r"tower\..*", "head", r"nomatch.*"]
        )
    assert list(rest) == ["head.weight", "other.w"]  # "head" must fully match
    assert [list(g) for g in groups] == [
        ["tower.0.bias", "head.bias"],
        ["tower.0.weight"],
        [],
        [],
    ]
    assert all(groups[0][n] is params[n] for n in groups[0])
    text = caplog.text
    assert "head.weight, other.w" in text
    assert "'head' matches no parameter" in text


def test_part_optimizers_and_their_schedulers() -> None:
    cfg = dense(
        """
        adam_optimizer { lr: 0.01 }
        exponential_decay_learning_rate { decay_size: 10 }
        part_optimizers { sgd_optimizer { lr: 0.1 } regex_pattern: "a.*" }
        part_optimizers {
          adagrad_optimizer { lr: 0.2 } regex_pattern: "nothing"
          constant_learning_rate {}
        }
        part_optimizers {
          adamw_optimizer { lr: 0.3 } regex_pattern: "b.*"
          manual_step_learning_rate { schedule_sizes: 5 learning_rates: 0.03 }
        }
        """
    )
    classes, kwargs, patterns = create_part_optimizer(cfg)
    assert classes == [torch.optim.SGD, torch.optim.Adagrad, torch.optim.AdamW]
    assert [k["lr"] for k in kwargs] == [0.1, 0.2, 0.3]
    assert patterns == ["a.*", "nothing", "b.*"]
    params = {n: torch.nn.Parameter(torch.zeros(2)) for n in ("a1", "b1", "c1")}
    rest, groups = group_param_by_regex_pattern(params, patterns)
    optimizers, indices = build_part_optimizers(classes, kwargs, groups)
    assert indices == [0, 2]
    assert all(isinstance(o, KeyedOptimizerWrapper) for o in optimizers)
    assert [list(o.params) for o in optimizers] == [["a1"], ["b1"]]
    assert isinstance(optimizers[1]._optimizer, torch.optim.AdamW)
    schedulers = create_part_optim_schedulers(optimizers, cfg, indices)
    assert [type(s) for s in schedulers] == [ExponentialDecayLR, ManualStepLR]  # inherited, own
    assert list(rest) == ["c1"]


def test_part_without_any_schedule_is_constant() -> None:
    cfg = dense(
        'sgd_optimizer { lr: 1 } part_optimizers { sgd_optimizer { lr: 1 } regex_pattern: "w" }'
    )
    opts, idx = build_part_optimizers(
        *create_part_optimizer(cfg)[:2], [{"w": torch.nn.Parameter(torch.zeros(1))}]
    )
    assert [type(s) for s in create_part_optim_schedulers(opts, cfg, idx)] == [ConstantLR]
