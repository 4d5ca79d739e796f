"""Ports of tzrec's optimizer tests (TorchEasyRec 54cac3165a2adece9a932616463a5b6a2095b0ce).

Inputs and expected values are carried over as data from the peer file named in
each test's docstring (tzrec/optim/ema_test.py, optimizer_test.py,
optimizer_builder_test.py, lr_scheduler_test.py). Where rankboard's API differs
(tzrec's ``TZRecOptimizer`` is rankboard's ``TrainStepOptimizer``), the mapping
is said in the docstring.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor, nn
from torch.optim import Optimizer
from torchrec.optim.keyed import KeyedOptimizerWrapper

from rankboard.protos import optimizer_pb2
from rankboard.trainer.optim import (
    ConstantLR,
    CosineAnnealingLR,
    CosineAnnealingWarmRestartsLR,
    DenseEMA,
    EMAOptimizer,
    ExponentialDecayLR,
    ManualStepLR,
    TrainStepOptimizer,
    build_part_optimizers,
    create_part_optim_schedulers,
    create_part_optimizer,
    group_param_by_regex_pattern,
)

# --- tzrec/optim/ema_test.py ---


def test_ema_config_default() -> None:
    """tzrec/optim/ema_test.py::test_config_default."""
    dense_optimizer = optimizer_pb2.DenseOptimizer()
    assert not dense_optimizer.HasField("ema")
    dense_optimizer.ema.SetInParent()
    assert dense_optimizer.HasField("ema")
    assert math.isclose(dense_optimizer.ema.decay, 0.999, rel_tol=1e-7)


def test_ema_update_and_average_parameters() -> None:
    """tzrec/optim/ema_test.py::test_update_and_average_parameters: 2 then 4 gives 3."""
    parameter = nn.Parameter(torch.tensor([1.0]))
    dense_ema = DenseEMA({"parameter": parameter}, decay=0.5)
    parameter.data.fill_(2.0)
    dense_ema.update()
    parameter.data.fill_(4.0)
    dense_ema.update()
    assert dense_ema.n_averaged.item() == 2
    torch.testing.assert_close(dense_ema.state_dict()["parameter"], torch.tensor([3.0]))
    with dense_ema.average_parameters():
        torch.testing.assert_close(parameter.detach(), torch.tensor([3.0]))
    torch.testing.assert_close(parameter.detach(), torch.tensor([4.0]))
    torch.testing.assert_close(dense_ema.state_dict()["parameter"], torch.tensor([3.0]))


def test_ema_optimizer_updates_ema_after_step() -> None:
    """tzrec/optim/ema_test.py::test_optimizer_updates_ema_after_step."""
    parameter = nn.Parameter(torch.tensor([1.0]))
    dense_ema = DenseEMA({"parameter": parameter}, decay=0.5)
    optimizer = EMAOptimizer(
        KeyedOptimizerWrapper(
            {"parameter": parameter}, lambda params: torch.optim.SGD(params, lr=1.0)
        ),
        dense_ema,
    )
    parameter.grad = torch.tensor([-1.0])
    optimizer.step()
    parameter.grad = torch.tensor([-2.0])
    optimizer.step()
    torch.testing.assert_close(parameter.detach(), torch.tensor([4.0]))
    torch.testing.assert_close(dense_ema.state_dict()["parameter"], torch.tensor([3.0]))


# test_counter_stays_on_cpu, test_average_parameters_restores_after_error, test_reset and
# test_invalid_decay are ported in test_optim_ema.py (named there).

# --- tzrec/optim/optimizer_test.py (TZRecOptimizer -> TrainStepOptimizer) ---


def keyed_sgd(param: Tensor) -> KeyedOptimizerWrapper:
    return KeyedOptimizerWrapper({"param_1": param}, lambda p: torch.optim.SGD(p, lr=0.001))


def test_optimizer() -> None:
    """tzrec/optim/optimizer_test.py::test_optimizer."""
    param_1 = torch.tensor([1.0, 2.0], requires_grad=True)
    optimizer = TrainStepOptimizer(keyed_sgd(param_1))
    param_1.grad = torch.tensor([1.0, 2.0])
    optimizer.zero_grad()
    assert param_1.grad is None
    param_1.grad = torch.tensor([1.0, 2.0])
    optimizer.step()
    torch.testing.assert_close(param_1.detach(), torch.tensor([0.9990, 1.9980]))


def test_optimizer_with_ga() -> None:
    """tzrec/optim/optimizer_test.py::test_optimizer_with_ga (gradient_accumulation_steps=2)."""
    param_1 = torch.tensor([1.0, 2.0], requires_grad=True)
    optimizer = TrainStepOptimizer(keyed_sgd(param_1), accumulation_steps=2)
    param_1.grad = torch.tensor([1.0, 2.0])
    optimizer.zero_grad()
    assert param_1.grad is None

    param_1.grad = torch.tensor([1.0, 2.0])
    optimizer.step()  # no update
    torch.testing.assert_close(param_1.detach(), torch.tensor([1.0, 2.0]))
    optimizer.zero_grad()  # no zero_grad
    torch.testing.assert_close(param_1.grad, torch.tensor([1.0, 2.0]))

    param_1.grad += torch.tensor([1.0, 2.0])
    optimizer.step()
    torch.testing.assert_close(param_1.detach(), torch.tensor([0.9980, 1.9960]))
    optimizer.zero_grad()
    assert param_1.grad is None


# --- tzrec/optim/optimizer_builder_test.py ---


def test_create_part_optimizer() -> None:
    """tzrec/optim/optimizer_builder_test.py::test_create_part_optimizer."""
    pattern1 = "model.dbmtl.task(.*)"
    pattern2 = "model.dbmtl.mmoe(.*)"
    config = optimizer_pb2.DenseOptimizer(
        adam_optimizer=optimizer_pb2.AdamOptimizer(lr=0.001),
        exponential_decay_learning_rate=optimizer_pb2.ExponentialDecayLR(decay_size=500),
        part_optimizers=[
            optimizer_pb2.PartOptimizer(
                adam_optimizer=optimizer_pb2.AdamOptimizer(lr=0.01),
                regex_pattern=pattern1,
                exponential_decay_learning_rate=optimizer_pb2.ExponentialDecayLR(decay_size=1000),
            ),
            optimizer_pb2.PartOptimizer(
                sgd_optimizer=optimizer_pb2.SGDOptimizer(lr=0.01),
                regex_pattern=pattern2,
                constant_learning_rate=optimizer_pb2.ConstantLR(),
            ),
        ],
    )
    classes, _, regex_patterns = create_part_optimizer(config)
    assert classes == [torch.optim.Adam, torch.optim.SGD]
    assert regex_patterns == [pattern1, pattern2]


def test_group_param_by_regex_pattern() -> None:
    """tzrec/optim/optimizer_builder_test.py::test_group_param_by_regex_pattern."""
    params = {
        "dbmtl.task_tower": nn.Parameter(Tensor([1.0])),
        "dbmtl.task_mlp": nn.Parameter(Tensor([2.0])),
        "dbmtl.mmoe.expert": nn.Parameter(Tensor([2.5])),
        "dbmtl.mmoe.gate": nn.Parameter(Tensor([3.0])),
        "dbmtl.mask_net.mlp": nn.Parameter(Tensor([3.5])),
        "dbmtl.bottom_mlp": nn.Parameter(Tensor([4.0])),
    }
    patterns = ["dbmtl.task(.*)", "dbmtl.mmoe(.*)", "dbmtl.bottom_mlp"]
    remaining, parts = group_param_by_regex_pattern(params, patterns)
    assert sorted(remaining) == ["dbmtl.mask_net.mlp"]
    assert sorted(parts[0]) == ["dbmtl.task_mlp", "dbmtl.task_tower"]
    assert sorted(parts[1]) == ["dbmtl.mmoe.expert", "dbmtl.mmoe.gate"]
    assert sorted(parts[2]) == ["dbmtl.bottom_mlp"]


def test_create_part_optim_schedulers() -> None:
    """tzrec/optim/optimizer_builder_test.py::test_create_part_optim_schedulers: a part
    without a learning rate inherits the dense optimizer's (ManualStepLR)."""
    config = optimizer_pb2.DenseOptimizer(
        adam_optimizer=optimizer_pb2.AdamOptimizer(lr=0.001),
        manual_step_learning_rate=optimizer_pb2.ManualStepLR(
            learning_rates=[0.001], schedule_sizes=[10]
        ),
        part_optimizers=[
            optimizer_pb2.PartOptimizer(
                adam_optimizer=optimizer_pb2.AdamOptimizer(lr=0.01),
                regex_pattern="model.dbmtl.task(.*)",
                constant_learning_rate=optimizer_pb2.ConstantLR(),
            ),
            optimizer_pb2.PartOptimizer(
                sgd_optimizer=optimizer_pb2.SGDOptimizer(lr=0.01),
                regex_pattern="model.dbmtl.mmoe(.*)",
                exponential_decay_learning_rate=optimizer_pb2.ExponentialDecayLR(decay_size=1000),
            ),
            optimizer_pb2.PartOptimizer(
                adamw_optimizer=optimizer_pb2.AdamWOptimizer(lr=0.01),
                regex_pattern="model.dbmtl.bottom(.*)",
            ),
        ],
    )
    param = {"mlp": Tensor([1.0])}
    kwarg = {"lr": 0.01}
    optimizers = [
        KeyedOptimizerWrapper(param, lambda params: Optimizer(params, kwarg)),
        KeyedOptimizerWrapper(param, lambda params: Optimizer(params, kwarg)),
    ]
    schedulers = create_part_optim_schedulers(optimizers, config, [0, 2])
    assert [type(s).__name__ for s in schedulers] == ["ConstantLR", "ManualStepLR"]


def test_build_part_optimizers() -> None:
    """tzrec/optim/optimizer_builder_test.py::test_build_part_optimizers: empty groups skipped."""
    optimizers, indices = build_part_optimizers(
        [torch.optim.Adam, torch.optim.SGD, torch.optim.AdamW],
        [
            {"lr": 0.01, "betas": (0.9, 0.999)},
            {"lr": 0.01, "momentum": 0.9},
            {"lr": 0.01, "betas": (0.9, 0.999)},
        ],
        [{"tower": nn.Parameter(Tensor([1.0]))}, {}, {"mlp": nn.Parameter(Tensor([2.0]))}],
    )
    assert [opt._optimizer.__class__.__name__ for opt in optimizers] == ["Adam", "AdamW"]
    assert indices == [0, 2]


# --- tzrec/optim/lr_scheduler_test.py ---


def adam(lr: float) -> torch.optim.Adam:
    return torch.optim.Adam([torch.tensor([1.0, 2.0])], lr=lr)


def lrs_after_steps(opt: torch.optim.Optimizer, schedule, n: int) -> list[float]:
    out = []
    for _ in range(n):
        schedule.step()
        out.append(opt.param_groups[0]["lr"])
    return out


def cos(base: float, t: float, period: float, min_lr: float = 0.0) -> float:
    return min_lr + (base - min_lr) * 0.5 * (1 + math.cos(math.pi * t / period))


def test_constant_lr() -> None:
    """tzrec/optim/lr_scheduler_test.py::test_constant_lr."""
    opt = adam(0.01)
    assert lrs_after_steps(opt, ConstantLR(opt), 1) == pytest.approx([0.01])


def test_exponential_decay_lr() -> None:
    """tzrec/optim/lr_scheduler_test.py::test_exponential_decay_lr."""
    opt = adam(0.01)
    schedule = ExponentialDecayLR(opt, decay_size=1, decay_factor=0.7, by_epoch=True)
    assert schedule.by_epoch
    assert lrs_after_steps(opt, schedule, 2) == pytest.approx([0.007, 0.0049])


def test_exponential_decay_lr_with_warmup() -> None:
    """tzrec/optim/lr_scheduler_test.py::test_exponential_decay_lr_with_warmup."""
    opt = adam(0.01)
    schedule = ExponentialDecayLR(
        opt, decay_size=1, decay_factor=0.7, warmup_size=2, warmup_learning_rate=0.005
    )
    assert not schedule.by_epoch
    assert lrs_after_steps(opt, schedule, 3) == pytest.approx([0.0075, 0.01, 0.007])


def test_manual_step_lr() -> None:
    """tzrec/optim/lr_scheduler_test.py::test_manual_step_lr."""
    opt = adam(0.01)
    schedule = ManualStepLR(opt, schedule_sizes=[2, 4, 8], learning_rates=[0.008, 0.004, 0.002])
    want = [0.01, 0.01, 0.008, 0.008, 0.004, 0.004, 0.004, 0.004, 0.002, 0.002]
    assert lrs_after_steps(opt, schedule, 10) == pytest.approx(want)


def test_manual_step_lr_with_warmup() -> None:
    """tzrec/optim/lr_scheduler_test.py::test_manual_step_lr_with_warmup."""
    opt = adam(0.004)
    schedule = ManualStepLR(
        opt, schedule_sizes=[2, 4, 8], learning_rates=[0.008, 0.004, 0.002], warmup=True
    )
    want = [0.006, 0.008, 0.008, 0.008, 0.004, 0.004, 0.004, 0.004, 0.002, 0.002]
    assert lrs_after_steps(opt, schedule, 10) == pytest.approx(want)


def test_cosine_annealing_lr() -> None:
    """tzrec/optim/lr_scheduler_test.py::test_cosine_annealing_lr (clamped after T_max)."""
    opt = adam(0.01)
    schedule = CosineAnnealingLR(opt, T_max=4, by_epoch=True)
    assert schedule.by_epoch
    want = [cos(0.01, 1, 4), 0.005, cos(0.01, 3, 4), 0.0, 0.0]
    assert lrs_after_steps(opt, schedule, 5) == pytest.approx(want, abs=1e-12)


def test_cosine_annealing_lr_with_min_lr() -> None:
    """tzrec/optim/lr_scheduler_test.py::test_cosine_annealing_lr_with_min_lr."""
    opt = adam(0.01)
    schedule = CosineAnnealingLR(opt, T_max=4, min_learning_rate=0.002)
    got = lrs_after_steps(opt, schedule, 5)
    assert got[0] == pytest.approx(cos(0.01, 1, 4, 0.002))
    assert got[1] == pytest.approx(0.006)
    assert got[3:] == pytest.approx([0.002, 0.002])


def test_cosine_annealing_lr_with_warmup() -> None:
    """tzrec/optim/lr_scheduler_test.py::test_cosine_annealing_lr_with_warmup."""
    opt = adam(0.01)
    schedule = CosineAnnealingLR(opt, T_max=4, warmup_size=2, warmup_learning_rate=0.002)
    assert not schedule.by_epoch
    assert lrs_after_steps(opt, schedule, 3) == pytest.approx([0.006, 0.01, cos(0.01, 1, 4)])


def test_cosine_annealing_warm_restarts_lr() -> None:
    """tzrec/optim/lr_scheduler_test.py::test_cosine_annealing_warm_restarts_lr."""
    opt = adam(0.01)
    schedule = CosineAnnealingWarmRestartsLR(opt, T_0=3)
    want = [cos(0.01, 1, 3), cos(0.01, 2, 3), 0.01, cos(0.01, 1, 3)]
    assert lrs_after_steps(opt, schedule, 4) == pytest.approx(want)


def test_cosine_annealing_warm_restarts_lr_with_T_mult() -> None:
    """tzrec/optim/lr_scheduler_test.py::test_cosine_annealing_warm_restarts_lr_with_T_mult."""
    opt = adam(0.01)
    schedule = CosineAnnealingWarmRestartsLR(opt, T_0=2, T_mult=2)
    want = [cos(0.01, 1, 2), 0.01, cos(0.01, 1, 4), cos(0.01, 2, 4), cos(0.01, 3, 4), 0.01]
    assert lrs_after_steps(opt, schedule, 6) == pytest.approx(want, abs=1e-12)


def test_cosine_annealing_warm_restarts_lr_with_warmup() -> None:
    """tzrec/optim/lr_scheduler_test.py::test_cosine_annealing_warm_restarts_lr_with_warmup."""
    opt = adam(0.01)
    schedule = CosineAnnealingWarmRestartsLR(opt, T_0=3, warmup_size=2, warmup_learning_rate=0.002)
    assert lrs_after_steps(opt, schedule, 3) == pytest.approx([0.006, 0.01, cos(0.01, 1, 3)])
