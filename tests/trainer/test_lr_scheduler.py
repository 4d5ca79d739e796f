"""LR schedules against their formulas written out here, on torch and torchrec optimizers."""

from __future__ import annotations

import math

import pytest
import torch
from torchrec.optim.keyed import CombinedOptimizer, KeyedOptimizerWrapper

from rankboard.protos import optimizer_pb2, parse_text
from rankboard.trainer.optim import (
    SCHEDULERS,
    ConstantLR,
    CosineAnnealingLR,
    CosineAnnealingWarmRestartsLR,
    ExponentialDecayLR,
    ManualStepLR,
    create_scheduler,
)


def warmup(base: float, s: int, warmup_lr: float, size: int) -> float:
    return warmup_lr + (base - warmup_lr) * s / size


def ref_exponential(base, s, decay_size, factor, staircase, warmup_lr, warmup_size, min_lr):
    if s < warmup_size:
        return warmup(base, s, warmup_lr, warmup_size)
    p = (s - warmup_size) / decay_size
    if staircase:
        p = math.floor(p)
    return max(base * factor**p, min_lr)


def ref_manual(base, s, sizes, rates, use_warmup):
    i = sum(1 for size in sizes if size < s)  # bisect_left written as a count
    if i > 0:
        return rates[i - 1]
    if use_warmup:
        return base + (rates[0] - base) * s / sizes[0]
    return base


def ref_cosine(base, s, t_max, min_lr, warmup_lr, warmup_size):
    if s < warmup_size:
        return warmup(base, s, warmup_lr, warmup_size)
    t = min(s - warmup_size, t_max)
    return min_lr + (base - min_lr) * (1 + math.cos(math.pi * t / t_max)) / 2


def ref_restarts(base, s, t0, t_mult, min_lr, warmup_lr, warmup_size):
    if s < warmup_size:
        return warmup(base, s, warmup_lr, warmup_size)
    # list the period starts explicitly
    start, period = warmup_size, t0
    while s >= start + period:
        start += period
        period *= t_mult
    t = s - start
    return min_lr + (base - min_lr) * (1 + math.cos(math.pi * t / period)) / 2


def two_group_sgd(lrs=(0.1, 0.0)) -> torch.optim.SGD:
    return torch.optim.SGD(
        [{"params": [torch.nn.Parameter(torch.zeros(1))], "lr": lr} for lr in lrs], lr=1.0
    )


def run(scheduler, optimizer, steps: int) -> list[list[float]]:
    seen = []
    for _ in range(steps):
        seen.append([g["lr"] for g in optimizer.param_groups])
        optimizer.step()
        scheduler.step()
    return seen


CASES = [
    (
        "exponential_decay_learning_rate { decay_size: 3 decay_factor: 0.5 staircase: true "
        "warmup_learning_rate: 0.01 warmup_size: 4 min_learning_rate: 0.005 }",
        lambda b, s: ref_exponential(b, s, 3, 0.5, True, 0.01, 4, 0.005),
    ),
    (
        "exponential_decay_learning_rate { decay_size: 5 decay_factor: 0.8 staircase: false }",
        lambda b, s: ref_exponential(b, s, 5, 0.8, False, 0.0, 0, 0.0),
    ),
    (
        "manual_step_learning_rate { schedule_sizes: [3, 7, 12] "
        "learning_rates: [0.05, 0.02, 0.01] }",
        lambda b, s: ref_manual(b, s, [3, 7, 12], [0.05, 0.02, 0.01], False),
    ),
    (
        "manual_step_learning_rate { schedule_sizes: [4, 9] learning_rates: [0.3, 0.02] "
        "warmup: true }",
        lambda b, s: ref_manual(b, s, [4, 9], [0.3, 0.02], True),
    ),
    (
        "cosine_annealing_learning_rate { T_max: 10 min_learning_rate: 0.001 "
        "warmup_learning_rate: 0.02 warmup_size: 3 }",
        lambda b, s: ref_cosine(b, s, 10, 0.001, 0.02, 3),
    ),
    (
        "cosine_annealing_warm_restarts_learning_rate { T_0: 3 T_mult: 2 "
        "min_learning_rate: 0.001 warmup_size: 2 warmup_learning_rate: 0.0 }",
        lambda b, s: ref_restarts(b, s, 3, 2, 0.001, 0.0, 2),
    ),
    (
        "cosine_annealing_warm_restarts_learning_rate { T_0: 4 }",
        lambda b, s: ref_restarts(b, s, 4, 1, 0.0, 0.0, 0),
    ),
    ("constant_learning_rate {}", lambda b, s: b),
    ("", lambda b, s: b),
]


def dense_cfg(schedule: str) -> optimizer_pb2.DenseOptimizer:
    return parse_text(f"sgd_optimizer {{ lr: 0.1 }} {schedule}", optimizer_pb2.DenseOptimizer())


@pytest.mark.parametrize(("schedule", "reference"), CASES)
def test_every_step_matches_the_formula_and_zero_base_stays_frozen(schedule, reference) -> None:
    opt = two_group_sgd((0.1, 0.0))
    scheduler = create_scheduler(opt, dense_cfg(schedule))
    for s, (lr, frozen) in enumerate(run(scheduler, opt, 30)):
        assert lr == pytest.approx(reference(0.1, s), rel=1e-6, abs=1e-12), s
        assert frozen == 0.0


@pytest.mark.parametrize(("schedule", "reference"), CASES[:6])
def test_schedules_drive_torchrec_keyed_and_combined_optimizers(schedule, reference) -> None:
    def keyed(name: str, lr: float) -> KeyedOptimizerWrapper:
        params = {name: torch.nn.Parameter(torch.zeros(2))}
        return KeyedOptimizerWrapper(params, lambda p: torch.optim.SGD(p, lr=lr))

    a, b = keyed("a", 0.1), keyed("b", 0.4)
    combined = CombinedOptimizer([a, b])
    scheduler = create_scheduler(combined, dense_cfg(schedule))
    alone = keyed("c", 0.2)
    scheduler_alone = create_scheduler(alone, dense_cfg(schedule))
    for s in range(20):
        lrs = [g["lr"] for g in combined.param_groups]
        assert lrs == pytest.approx([reference(0.1, s), reference(0.4, s)], rel=1e-6, abs=1e-12)
        assert a.param_groups[0]["lr"] == lrs[0]  # the members' own groups moved
        assert alone.param_groups[0]["lr"] == pytest.approx(reference(0.2, s), rel=1e-6)
        combined.step()
        alone.step()
        scheduler.step()
        scheduler_alone.step()


def test_registry_is_keyed_by_config_message_name() -> None:
    assert {
        "ConstantLR": ConstantLR,
        "ExponentialDecayLR": ExponentialDecayLR,
        "ManualStepLR": ManualStepLR,
        "CosineAnnealingLR": CosineAnnealingLR,
        "CosineAnnealingWarmRestartsLR": CosineAnnealingWarmRestartsLR,
    } == SCHEDULERS
    lr_fields = optimizer_pb2.DenseOptimizer.DESCRIPTOR.oneofs_by_name["learning_rate"].fields
    assert {f.message_type.name for f in lr_fields} == set(SCHEDULERS)


def test_by_epoch_flag_is_read_from_config() -> None:
    opt = two_group_sgd()
    cfg = dense_cfg("exponential_decay_learning_rate { decay_size: 1 by_epoch: true }")
    assert create_scheduler(opt, cfg).by_epoch is True
    assert create_scheduler(two_group_sgd(), dense_cfg("")).by_epoch is False


@pytest.mark.parametrize(
    ("schedule", "message"),
    [
        ("exponential_decay_learning_rate { }", "decay_size must be > 0"),
        ("exponential_decay_learning_rate { decay_size: 2 decay_factor: 0 }", "decay_factor"),
        ("manual_step_learning_rate { }", "at least one schedule_sizes"),
        (
            "manual_step_learning_rate { schedule_sizes: [1, 2] learning_rates: [0.1] }",
            "same length",
        ),
        (
            "manual_step_learning_rate { schedule_sizes: [5, 5] learning_rates: [0.1, 0.2] }",
            "increasing",
        ),
        (
            "manual_step_learning_rate { schedule_sizes: [0] learning_rates: [0.1] warmup: true }",
            r"schedule_sizes\[0\] > 0",
        ),
        ("cosine_annealing_learning_rate { T_max: 0 }", "T_max must be > 0"),
        ("cosine_annealing_warm_restarts_learning_rate { T_0: 0 }", "T_0 must be > 0"),
        ("cosine_annealing_warm_restarts_learning_rate { T_0: 2 T_mult: 0 }", "T_mult"),
        (
            "cosine_annealing_learning_rate { T_max: 3 min_learning_rate: -1 }",
            "min_learning_rate",
        ),
    ],
)
def test_bad_schedule_configs_raise_clear_errors(schedule: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        create_scheduler(two_group_sgd(), dense_cfg(schedule))


def test_state_dict_round_trip_resumes_the_schedule() -> None:
    cfg = dense_cfg("cosine_annealing_learning_rate { T_max: 10 }")
    opt = two_group_sgd((0.1,))
    scheduler = create_scheduler(opt, cfg)
    run(scheduler, opt, 4)
    opt2 = two_group_sgd((0.1,))
    scheduler2 = create_scheduler(opt2, cfg)
    scheduler2.load_state_dict(scheduler.state_dict())
    scheduler2.step()
    assert opt2.param_groups[0]["lr"] == pytest.approx(ref_cosine(0.1, 5, 10, 0.0, 0.0, 0))
