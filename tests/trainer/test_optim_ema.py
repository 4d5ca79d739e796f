"""dense_optimizer { ema {} }: tzrec's dense EMA against torch's AveragedModel and a numpy rule.

Reference semantics (tzrec/optim/ema.py at 54cac31, built on
``torch.optim.swa_utils.AveragedModel`` with ``get_ema_multi_avg_fn``): the first
update copies the weights, each later one sets avg = decay * avg + (1 - decay) * w,
after every optimizer step that updates the weights.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from rankboard.protos import ConfigError, parse_text, train_pb2
from rankboard.trainer.optim import DenseEMA, build_optimizers


def make_model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 1))


def train(cfg_text: str, steps: int, seed: int = 0):
    model = make_model(seed)
    cfg = parse_text(cfg_text, train_pb2.TrainConfig())
    opts = build_optimizers(model, cfg)
    g = torch.Generator().manual_seed(seed + 1)
    after: list[dict[str, np.ndarray]] = []
    for _ in range(steps):
        x, y = torch.randn(16, 4, generator=g), torch.randn(16, 1, generator=g)
        opts.zero_grad()
        opts.backward(torch.nn.functional.mse_loss(model(x), y))
        if opts.step():
            after.append({n: p.detach().clone().numpy() for n, p in model.named_parameters()})
    return model, opts, after


def rule(after: list[dict[str, np.ndarray]], name: str, decay: float) -> np.ndarray:
    avg = after[0][name].astype(np.float64)  # the first update copies
    for weights in after[1:]:
        avg = decay * avg + (1 - decay) * weights[name].astype(np.float64)
    return avg


@pytest.mark.parametrize(
    ("dense", "accumulation"),
    [
        ("adam_optimizer { lr: 0.05 } ema { decay: 0.9 }", 1),
        ("adam_optimizer { lr: 0.05 } ema { decay: 0.9 }", 3),  # optimizer steps only
        # the part optimizer's parameters are averaged too (tzrec: all dense params)
        (
            "sgd_optimizer { lr: 0.1 } ema { decay: 0.7 } part_optimizers { "
            'adam_optimizer { lr: 0.02 } regex_pattern: "2\\\\..*" }',
            1,
        ),
    ],
)
def test_ema_copies_first_then_decays_after_each_optimizer_step(dense, accumulation) -> None:
    cfg = f"dense_optimizer {{ {dense} }} gradient_accumulation_steps: {accumulation}"
    model, opts, after = train(cfg, steps=24)
    assert len(after) == 24 // accumulation == opts.optimizer_steps
    assert int(opts.ema.n_averaged) == len(after)
    decay = opts.ema.decay
    for name, p in model.named_parameters():
        want = rule(after, name, decay)
        np.testing.assert_allclose(opts.ema.averages[name].numpy(), want, rtol=1e-5, atol=1e-6)
        assert not np.allclose(want, p.detach().numpy())  # the average is not the weights


def test_matches_torch_averaged_model_bit_for_bit() -> None:
    """Driven side by side with torch's AveragedModel(get_ema_multi_avg_fn), as tzrec is."""
    model = make_model()
    ema = DenseEMA(dict(model.named_parameters()), decay=0.95)
    ref = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(0.95), use_buffers=False)
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    g = torch.Generator().manual_seed(3)
    for _ in range(10):
        opt.zero_grad()
        torch.nn.functional.mse_loss(
            model(torch.randn(8, 4, generator=g)), torch.zeros(8, 1)
        ).backward()
        opt.step()
        ema.update()
        ref.update_parameters(model)
    assert int(ema.n_averaged) == int(ref.n_averaged) == 10
    for (name, _), avg in zip(model.named_parameters(), ref.module.parameters(), strict=True):
        assert torch.equal(ema.averages[name], avg.detach()), name


def test_tzrec_one_step_value_differs_from_the_retired_rule() -> None:
    """The issue's example: weights 1 -> 2 -> 4 with decay 0.5 give 3.0 (tzrec), not 2.75."""
    w = torch.nn.Parameter(torch.tensor([1.0]))
    ema = DenseEMA({"w": w}, decay=0.5)
    for value in (2.0, 4.0):
        with torch.no_grad():
            w.fill_(value)
        ema.update()
    assert ema.averages["w"].item() == 3.0  # retired ema_config: 0.5*(0.5*1+0.5*2)+0.5*4 = 2.75


def test_steps_the_grad_scaler_skips_do_not_update_the_average() -> None:
    cfg = (
        "dense_optimizer { sgd_optimizer { lr: 0.1 momentum: 0 } ema { decay: 0.5 } } "
        "grad_scaler {}"
    )
    model = make_model()
    opts = build_optimizers(model, parse_text(cfg, train_pb2.TrainConfig()))
    x = torch.randn(4, 4)
    for bad in (False, True, False):
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        n_before = int(opts.ema.n_averaged)
        opts.zero_grad()
        scale = float("inf") if bad else 1.0
        opts.backward(model(x * scale).sum() if bad else model(x).pow(2).mean())
        assert opts.step()
        moved = any(not torch.equal(before[n], p) for n, p in model.named_parameters())
        assert moved == (not bad)
        assert int(opts.ema.n_averaged) == n_before + (0 if bad else 1)


def test_average_parameters_evaluates_the_average_and_restores_the_weights() -> None:
    model, opts, _ = train("dense_optimizer { sgd_optimizer { lr: 0.1 } ema { decay: 0.5 } }", 6)
    x = torch.randn(5, 4)
    trained = {n: p.detach().clone() for n, p in model.named_parameters()}
    with opts.ema.average_parameters():
        for name, p in model.named_parameters():
            torch.testing.assert_close(p.detach(), opts.ema.averages[name])
        averaged_out = model(x)
    for name, p in model.named_parameters():
        assert torch.equal(p.detach(), trained[name])
    assert not torch.allclose(averaged_out, model(x))


def test_average_parameters_restores_after_an_error() -> None:
    """tzrec/optim/ema_test.py::test_average_parameters_restores_after_error."""
    w = torch.nn.Parameter(torch.tensor([1.0]))
    ema = DenseEMA({"w": w}, decay=0.5)
    with torch.no_grad():
        w.fill_(2.0)
    ema.update()
    with torch.no_grad():
        w.fill_(4.0)
    with pytest.raises(RuntimeError, match="evaluation failed"), ema.average_parameters():
        assert w.item() == 2.0
        raise RuntimeError("evaluation failed")
    assert w.item() == 4.0


def test_reset_copies_the_current_weights_and_restarts_the_count() -> None:
    """tzrec/optim/ema_test.py::test_reset: the next update copies again."""
    first, second = torch.nn.Parameter(torch.tensor([1.0])), torch.nn.Parameter(torch.tensor([2.0]))
    ema = DenseEMA({"first": first, "second": second}, decay=0.5)
    ema.update()
    with torch.no_grad():
        first.fill_(3.0)
        second.fill_(4.0)
    ema.reset()
    assert int(ema.n_averaged) == 0
    assert (ema.state_dict()["first"].item(), ema.state_dict()["second"].item()) == (3.0, 4.0)
    with torch.no_grad():
        first.fill_(5.0)
    ema.update()  # copies, does not average with 3.0
    assert ema.averages["first"].item() == 5.0


def test_state_dict_round_trip_and_mismatch() -> None:
    cfg = "dense_optimizer { sgd_optimizer { lr: 0.1 } ema { decay: 0.5 } }"
    _, opts, _ = train(cfg, steps=3)
    state = opts.ema.state_dict()
    assert int(state["__n_averaged__"]) == 3  # tzrec's key
    _, fresh, _ = train(cfg, steps=1, seed=7)
    fresh.ema.load_state_dict(state)
    for name, t in state.items():
        if name != "__n_averaged__":
            assert torch.equal(fresh.ema.averages[name], t)
    assert int(fresh.ema.n_averaged) == 3
    other = DenseEMA({"w": torch.nn.Parameter(torch.zeros(1))}, decay=0.5)
    with pytest.raises(ValueError, match="ema state has parameters"):
        other.load_state_dict(state)


def test_counter_stays_on_the_cpu() -> None:
    """tzrec/optim/ema_test.py::test_counter_stays_on_cpu (CPU parameters here)."""
    ema = DenseEMA({"w": torch.nn.Parameter(torch.ones(1))}, decay=0.5)
    assert ema.n_averaged.device.type == "cpu"
    assert ema.state_dict()["w"].device.type == "cpu"


def test_half_precision_weights_average_in_float32() -> None:
    """Deliberate difference from tzrec (which keeps the weights' dtype): float32 average."""
    w = torch.nn.Parameter(torch.zeros(3, dtype=torch.bfloat16))
    ema = DenseEMA({"w": w}, decay=0.999)
    ema.update()  # copies 0
    with torch.no_grad():
        w.fill_(1.0)
    ema.update()
    assert ema.averages["w"].dtype == torch.float32
    # 0.001 survives in float32; in bf16, 0 + 0.001 * (1 - 0) is 0.000999... -> 0.0009994507
    torch.testing.assert_close(ema.averages["w"], torch.full((3,), 0.001))
    with ema.average_parameters():
        assert w.dtype == torch.bfloat16


@pytest.mark.parametrize("decay", [1.1, -0.1])
def test_decay_outside_0_1_is_an_error(decay: float) -> None:
    """tzrec/optim/ema_test.py::test_invalid_decay."""
    with pytest.raises(ValueError, match="decay"):
        DenseEMA({"w": torch.nn.Parameter(torch.zeros(1))}, decay=decay)


def test_decay_one_keeps_the_first_copy() -> None:
    w = torch.nn.Parameter(torch.tensor([1.0]))
    ema = DenseEMA({"w": w}, decay=1.0)
    for value in (2.0, 7.0):
        with torch.no_grad():
            w.fill_(value)
        ema.update()
    assert ema.averages["w"].item() == 2.0


def test_ema_without_dense_weights_is_an_error() -> None:
    with pytest.raises(ValueError, match="no dense parameters"):
        DenseEMA({}, decay=0.9)


@pytest.mark.parametrize(
    ("text", "hint"),
    [
        ("ema_config { decay: 0.99 }", "dense_optimizer { ema { decay: 0.99 } }"),
        ("ema_config {}", "dense_optimizer { ema { decay: 0.9999 } }"),
        ("ema_config { decay: 0.9 update_interval: 4 }", "update_interval and start_step"),
    ],
)
def test_retired_ema_config_is_refused_with_its_replacement(text: str, hint: str) -> None:
    cfg = parse_text(
        f"dense_optimizer {{ adam_optimizer {{ lr: 0.1 }} }} {text}", train_pb2.TrainConfig()
    )
    with pytest.raises(ConfigError, match="retired") as err:
        build_optimizers(make_model(), cfg)
    assert hint in str(err.value)


def test_ema_on_a_sharded_model_averages_the_dense_weights_only(sharded_model) -> None:
    from tests.trainer.helpers import make_batch

    cfg = parse_text(
        "sparse_optimizer { adagrad_optimizer { lr: 0.1 } constant_learning_rate {} } "
        "dense_optimizer { adam_optimizer { lr: 0.01 } constant_learning_rate {} "
        "ema { decay: 0.5 } }",
        train_pb2.TrainConfig(),
    )
    model = sharded_model(cfg.sparse_optimizer)
    opts = build_optimizers(model, cfg)
    dense = {n for n, _ in model.named_parameters() if ".over." in f".{n}"}
    assert set(opts.ema.averages) == dense and dense  # no embedding table
    gen = torch.Generator().manual_seed(0)
    avg: dict[str, torch.Tensor] = {}
    for _ in range(3):
        kjt, labels = make_batch(32, gen)
        opts.zero_grad()
        opts.backward(torch.nn.functional.binary_cross_entropy_with_logits(model(kjt), labels))
        assert opts.step()
        for n, p in model.named_parameters():
            if n in dense:
                w = p.detach().double()
                avg[n] = w.clone() if n not in avg else 0.5 * avg[n] + 0.5 * w
    for n in dense:
        torch.testing.assert_close(opts.ema.averages[n].double(), avg[n], rtol=1e-6, atol=1e-7)
