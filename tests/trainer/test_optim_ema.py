"""ema_config: the moving average of the dense weights against a reference written here."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rankboard.protos import parse_text, train_pb2
from rankboard.trainer.optim import ExponentialMovingAverage, build_optimizers


def train(cfg_text: str, steps: int, seed: int = 0):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 1))
    cfg = parse_text(cfg_text, train_pb2.TrainConfig())
    opts = build_optimizers(model, cfg)
    g = torch.Generator().manual_seed(seed + 1)
    init = {n: p.detach().clone().numpy() for n, p in model.named_parameters()}
    after: list[dict[str, np.ndarray]] = []
    for _ in range(steps):
        x, y = torch.randn(16, 4, generator=g), torch.randn(16, 1, generator=g)
        opts.zero_grad()
        opts.backward(torch.nn.functional.mse_loss(model(x), y))
        if opts.step():
            after.append({n: p.detach().clone().numpy() for n, p in model.named_parameters()})
    return model, opts, init, after


def expected(init, after, name, decay, interval, start):
    avg = init[name].astype(np.float64)
    for s, weights in enumerate(after, start=1):
        w = weights[name].astype(np.float64)
        if s < start:
            avg = w
        elif (s - start) % interval == 0:
            avg = decay * avg + (1 - decay) * w
    return avg


@pytest.mark.parametrize(
    ("ema", "accumulation"),
    [
        ("decay: 0.9", 1),
        ("decay: 0.8 update_interval: 3", 1),
        ("decay: 0.7 update_interval: 2 start_step: 5", 1),
        ("decay: 0.9 update_interval: 2", 3),  # optimizer steps, not micro-batches
    ],
)
def test_ema_follows_the_rule_at_every_configuration(ema: str, accumulation: int) -> None:
    cfg = (
        f"dense_optimizer {{ adam_optimizer {{ lr: 0.05 }} }} ema_config {{ {ema} }} "
        f"gradient_accumulation_steps: {accumulation}"
    )
    model, opts, init, after = train(cfg, steps=24)
    assert len(after) == 24 // accumulation == opts.optimizer_steps
    c = parse_text(f"ema_config {{ {ema} }}", train_pb2.TrainConfig()).ema_config
    for name, p in model.named_parameters():
        want = expected(init, after, name, c.decay, c.update_interval, c.start_step)
        np.testing.assert_allclose(opts.ema.shadow[name].numpy(), want, rtol=1e-5, atol=1e-6)
        assert not np.allclose(want, p.detach().numpy())  # the average is not the weights


def test_average_parameters_evaluates_the_average_and_restores_the_weights() -> None:
    model, opts, _, _ = train(
        "dense_optimizer { sgd_optimizer { lr: 0.1 } } ema_config { decay: 0.5 }", steps=6
    )
    x = torch.randn(5, 4)
    trained = {n: p.detach().clone() for n, p in model.named_parameters()}
    with opts.ema.average_parameters():
        for name, p in model.named_parameters():
            torch.testing.assert_close(p.detach(), opts.ema.shadow[name])
        averaged_out = model(x)
    for name, p in model.named_parameters():
        assert torch.equal(p.detach(), trained[name])
    assert not torch.allclose(averaged_out, model(x))


def test_state_dict_round_trip_and_mismatch() -> None:
    cfg = "dense_optimizer { sgd_optimizer { lr: 0.1 } } ema_config { decay: 0.5 }"
    _, opts, _, _ = train(cfg, steps=3)
    state = opts.ema.state_dict()
    _, fresh, _, _ = train(cfg, steps=1, seed=7)
    fresh.ema.load_state_dict(state)
    for name, t in state["shadow"].items():
        assert torch.equal(fresh.ema.shadow[name], t)
    assert fresh.ema.num_updates == 3
    other = ExponentialMovingAverage({"w": torch.nn.Parameter(torch.zeros(1))}, decay=0.5)
    with pytest.raises(ValueError, match="ema state has parameters"):
        other.load_state_dict(state)


def test_half_precision_weights_average_in_float32() -> None:
    w = torch.nn.Parameter(torch.zeros(3, dtype=torch.bfloat16))
    ema = ExponentialMovingAverage({"w": w}, decay=0.999)
    with torch.no_grad():
        w.fill_(1.0)
    ema.update(1)
    assert ema.shadow["w"].dtype == torch.float32
    # 0.001 is below bf16's resolution near 0 after rounding; float32 keeps it
    torch.testing.assert_close(ema.shadow["w"], torch.full((3,), 0.001))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"decay": 1.0}, "decay must be in"),
        ({"decay": -0.1}, "decay must be in"),
        ({"decay": 0.9, "update_interval": 0}, "update_interval must be >= 1"),
        ({"decay": 0.9, "start_step": -1}, "start_step must be >= 0"),
    ],
)
def test_bad_settings_are_clear_errors(kwargs, message) -> None:
    with pytest.raises(ValueError, match=message):
        ExponentialMovingAverage({"w": torch.nn.Parameter(torch.zeros(1))}, **kwargs)


def test_ema_without_dense_weights_is_an_error() -> None:
    with pytest.raises(ValueError, match="no parameters"):
        ExponentialMovingAverage({}, decay=0.9)


def test_ema_on_a_sharded_model_averages_the_dense_weights_only(sharded_model) -> None:
    from .conftest import make_batch

    cfg = parse_text(
        "sparse_optimizer { adagrad_optimizer { lr: 0.1 } constant_learning_rate {} } "
        "dense_optimizer { adam_optimizer { lr: 0.01 } constant_learning_rate {} } "
        "ema_config { decay: 0.5 }",
        train_pb2.TrainConfig(),
    )
    model = sharded_model(cfg.sparse_optimizer)
    opts = build_optimizers(model, cfg)
    dense = {n for n, _ in model.named_parameters() if ".over." in f".{n}"}
    assert set(opts.ema.shadow) == dense and dense  # no embedding table
    gen = torch.Generator().manual_seed(0)
    avg = {n: p.detach().clone().double() for n, p in model.named_parameters() if n in dense}
    for _ in range(3):
        kjt, labels = make_batch(32, gen)
        opts.zero_grad()
        opts.backward(torch.nn.functional.binary_cross_entropy_with_logits(model(kjt), labels))
        assert opts.step()
        for n, p in model.named_parameters():
            if n in dense:
                avg[n] = 0.5 * avg[n] + 0.5 * p.detach().double()
    for n in dense:
        torch.testing.assert_close(opts.ema.shadow[n].double(), avg[n], rtol=1e-6, atol=1e-7)
