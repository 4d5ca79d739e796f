"""TrainConfig.grad_clipping (tzrec field 19) against clipping written out here.

tzrec wraps its combined optimizer in torchrec's GradientClippingOptimizer
(tzrec/main.py at 54cac31); the reference below is the definition: norm clipping
scales all dense gradients by min(1, max / (||g||_p + 1e-6)), value clipping
clamps each gradient to [-max, max]; then plain SGD steps.
"""

from __future__ import annotations

import math

import pytest
import torch

from rankboard.protos import ConfigError, parse_text, train_pb2
from rankboard.trainer.optim import build_optimizers


def model_and_batch(seed: int = 0):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.Linear(2, 1))
    x, y = torch.randn(8, 3) * 10, torch.randn(8, 1) * 10  # large: the gradients get clipped
    return model, x, y


def reference_step(clipping: str, max_gradient: float, norm_type: float) -> dict[str, torch.Tensor]:
    model, x, y = model_and_batch()
    torch.nn.functional.mse_loss(model(x), y).backward()
    grads = {n: p.grad.detach().double() for n, p in model.named_parameters()}
    if clipping == "norm":
        if math.isinf(norm_type):
            total = max(g.abs().max().item() for g in grads.values())
        else:
            total = sum((g.abs() ** norm_type).sum().item() for g in grads.values()) ** (
                1 / norm_type
            )
        coef = min(1.0, max_gradient / (total + 1e-6))
        grads = {n: g * coef for n, g in grads.items()}
    elif clipping == "value":
        grads = {n: g.clamp(-max_gradient, max_gradient) for n, g in grads.items()}
    return {n: p.detach().double() - 0.1 * grads[n] for n, p in model.named_parameters()}


@pytest.mark.parametrize(
    ("block", "clipping", "max_gradient", "norm_type"),
    [
        ('clipping_type: "norm" max_gradient: 1.0', "norm", 1.0, 2.0),
        ('clipping_type: "NORM" max_gradient: 0.5 norm_type: 1.0', "norm", 0.5, 1.0),
        ('clipping_type: "norm" max_gradient: 0.5 norm_type: inf', "norm", 0.5, math.inf),
        ('clipping_type: "value" max_gradient: 0.3', "value", 0.3, 2.0),
        ('clipping_type: "none"', "none", 1.0, 2.0),
        ("", "none", 1.0, 2.0),  # tzrec's default clipping_type is "none"
    ],
)
def test_clipping_matches_the_definition(block, clipping, max_gradient, norm_type) -> None:
    cfg = parse_text(
        "dense_optimizer { sgd_optimizer { lr: 0.1 momentum: 0 } } "
        f"grad_clipping {{ {block} }}",
        train_pb2.TrainConfig(),
    )
    model, x, y = model_and_batch()
    opts = build_optimizers(model, cfg)
    opts.zero_grad()
    opts.backward(torch.nn.functional.mse_loss(model(x), y))
    assert opts.step()
    want = reference_step(clipping, max_gradient, norm_type)
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.detach().double(), want[name], rtol=1e-5, atol=1e-6)
    if clipping != "none":  # the data makes clipping matter
        unclipped = reference_step("none", 1.0, 2.0)
        assert any(not torch.allclose(unclipped[n], want[n]) for n in want)


def test_unknown_clipping_type_is_a_config_error() -> None:
    cfg = parse_text(
        'dense_optimizer { adam_optimizer { lr: 0.1 } } grad_clipping { clipping_type: "l2" }',
        train_pb2.TrainConfig(),
    )
    with pytest.raises(ConfigError, match="clipping_type must be one of none, norm, value"):
        build_optimizers(model_and_batch()[0], cfg)
