"""Gradient accumulation, GradScaler and mixed-precision settings of the step wrapper."""

from __future__ import annotations

import pytest
import torch

from rankboard.protos import parse_text, train_pb2
from rankboard.trainer.optim import TrainStepOptimizer, build_optimizers


def linear(seed: int = 0) -> torch.nn.Linear:
    torch.manual_seed(seed)
    return torch.nn.Linear(3, 1)


def data(n: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, 3, generator=g), torch.randn(n, 1, generator=g)


def mse(model, x, y):
    return torch.nn.functional.mse_loss(model(x), y)


def test_accumulating_two_halves_equals_one_full_batch_step() -> None:
    x, y = data()
    full = linear()
    opt = torch.optim.SGD(full.parameters(), lr=0.1)
    opt.zero_grad()
    mse(full, x, y).backward()
    opt.step()

    acc = linear()
    wrapper = TrainStepOptimizer(torch.optim.SGD(acc.parameters(), lr=0.1), accumulation_steps=2)
    stepped = []
    for half in (slice(0, 4), slice(4, 8)):
        wrapper.zero_grad()
        wrapper.backward(mse(acc, x[half], y[half]))
        stepped.append(wrapper.step())
    assert stepped == [False, True]
    for a, b in zip(acc.parameters(), full.parameters(), strict=True):
        assert torch.allclose(a, b, atol=1e-6)


def test_zero_grad_only_at_window_start() -> None:
    model = linear()
    wrapper = TrainStepOptimizer(torch.optim.SGD(model.parameters(), lr=0.0), accumulation_steps=3)
    x, y = data()
    grads = []
    for _ in range(4):
        wrapper.zero_grad()
        wrapper.backward(mse(model, x, y))
        grads.append(model.bias.grad.clone())
        wrapper.step()
    # grads accumulate over the window of 3, then restart
    assert torch.allclose(grads[1], 2 * grads[0])
    assert torch.allclose(grads[2], 3 * grads[0])
    assert torch.allclose(grads[3], grads[0])


def test_grad_scaler_scales_loss_unscales_before_step_and_skips_inf() -> None:
    x, y = data()
    ref = linear()
    ref_opt = torch.optim.SGD(ref.parameters(), lr=0.1)
    ref_opt.zero_grad()
    mse(ref, x, y).backward()
    ref_opt.step()

    model = linear()
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0, growth_interval=1)
    wrapper = TrainStepOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), grad_scaler=scaler)
    wrapper.zero_grad()
    wrapper.backward(mse(model, x, y))
    assert torch.allclose(model.bias.grad, 1024.0 * ref.bias.grad)  # scaled loss
    assert wrapper.step()
    for a, b in zip(model.parameters(), ref.parameters(), strict=True):
        assert torch.allclose(a, b, atol=1e-6)
    assert scaler.get_scale() == 2048.0  # update() grew the scale after a finite step

    before = [p.detach().clone() for p in model.parameters()]
    wrapper.zero_grad()
    wrapper.backward(model(x).sum() * float("inf"))
    wrapper.step()
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), before, strict=True))
    assert scaler.get_scale() == 1024.0  # backed off


def test_from_config_reads_train_config() -> None:
    cfg = parse_text(
        """
        gradient_accumulation_steps: 2
        mixed_precision: "FP16"
        grad_scaler { init_scale: 256 growth_interval: 10 }
        """,
        train_pb2.TrainConfig(),
    )
    wrapper = TrainStepOptimizer.from_config(torch.optim.SGD(linear().parameters(), lr=0.1), cfg)
    assert wrapper.accumulation_steps == 2
    assert wrapper.autocast_dtype is torch.float16
    assert wrapper.grad_scaler is not None
    assert wrapper.grad_scaler.get_scale() == 256.0
    assert wrapper.grad_scaler.get_growth_interval() == 10
    assert wrapper.state_dict()["grad_scaler"]["scale"] == 256.0

    plain = TrainStepOptimizer.from_config(
        torch.optim.SGD(linear().parameters(), lr=0.1), train_pb2.TrainConfig()
    )
    assert (plain.accumulation_steps, plain.grad_scaler, plain.autocast_dtype) == (1, None, None)


def test_autocast_uses_configured_dtype() -> None:
    cfg = parse_text('mixed_precision: "BF16"', train_pb2.TrainConfig())
    wrapper = TrainStepOptimizer.from_config(torch.optim.SGD(linear().parameters(), lr=0.1), cfg)
    with wrapper.autocast("cpu"):
        out = torch.nn.Linear(3, 1)(torch.ones(2, 3))
    assert out.dtype is torch.bfloat16


def test_bad_settings_raise() -> None:
    opt = torch.optim.SGD(linear().parameters(), lr=0.1)
    with pytest.raises(ValueError, match="mixed_precision must be one of FP16, BF16"):
        TrainStepOptimizer.from_config(
            opt, parse_text('mixed_precision: "fp8"', train_pb2.TrainConfig())
        )
    with pytest.raises(ValueError, match="gradient_accumulation_steps must be >= 1"):
        TrainStepOptimizer(opt, accumulation_steps=0)


def test_zero_accumulation_steps_means_none_as_in_tzrec() -> None:
    cfg = parse_text("gradient_accumulation_steps: 0", train_pb2.TrainConfig())
    wrapper = TrainStepOptimizer.from_config(torch.optim.SGD(linear().parameters(), lr=0.1), cfg)
    assert wrapper.accumulation_steps == 1


def test_schedules_step_per_optimizer_step_or_per_epoch() -> None:
    cfg = parse_text(
        """
        gradient_accumulation_steps: 2
        dense_optimizer {
            sgd_optimizer { lr: 1.0 }
            exponential_decay_learning_rate { decay_size: 1 decay_factor: 0.5 }
            part_optimizers {
                sgd_optimizer { lr: 1.0 } regex_pattern: "bias"
                exponential_decay_learning_rate { decay_size: 1 decay_factor: 0.5 by_epoch: true }
            }
        }
        """,
        train_pb2.TrainConfig(),
    )
    model = linear()
    opts = build_optimizers(model, cfg)
    x, y = data()
    for _ in range(4):  # 4 training steps = 2 optimizer steps
        opts.zero_grad()
        opts.backward(mse(model, x, y))
        opts.step()
    assert [g["lr"] for g in opts.optimizer.param_groups] == [0.25, 1.0]
    opts.end_epoch()
    assert [g["lr"] for g in opts.optimizer.param_groups] == [0.25, 0.5]


def test_dense_params_without_dense_optimizer_is_an_error() -> None:
    with pytest.raises(ValueError, match="no dense_optimizer"):
        build_optimizers(linear(), train_pb2.TrainConfig())
