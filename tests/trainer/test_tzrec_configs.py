"""tzrec's own example and test configs parse unchanged and build.

The files under tests/trainer/data/tzrec/ are blocks copied unchanged from
TorchEasyRec at commit 54cac3165a2adece9a932616463a5b6a2095b0ce; each file's
header names its source path (``*.train_config``: the ``train_config { }``
block; ``*.losses``: the model's ``losses { }`` blocks).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from torchrec.optim.clipping import GradientClippingOptimizer

from rankboard.protos import loss_pb2, parse_text, train_pb2
from rankboard.trainer.loss import create_loss, loss_name
from rankboard.trainer.optim import build_optimizers

DATA = Path(__file__).parent / "data" / "tzrec"
TRAIN_CONFIGS = sorted(DATA.glob("*.train_config"))
LOSSES = sorted(DATA.glob("*.losses"))


def blocks(text: str, key: str) -> list[str]:
    """The bodies of the top-level ``key { ... }`` blocks of ``text`` (brace matching)."""
    out = []
    for match in re.finditer(rf"(?m)^\s*{key}\s*\{{", text):
        depth, i = 1, match.end()
        while depth:
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            i += 1
        out.append(text[match.end() : i - 1])
    return out


def source_of(path: Path) -> str:
    return re.search(r"TorchEasyRec's (\S+)", path.read_text()).group(1)


def test_the_copies_are_there_and_name_their_source() -> None:
    assert len(TRAIN_CONFIGS) >= 5 and len(LOSSES) >= 3
    for path in TRAIN_CONFIGS + LOSSES:
        assert source_of(path).endswith(".config")
        assert "54cac3165a2adece9a932616463a5b6a2095b0ce" in path.read_text()


@pytest.mark.parametrize("path", TRAIN_CONFIGS, ids=lambda p: p.stem)
def test_train_config_parses_builds_and_steps(path: Path, sharded_model) -> None:
    from tests.trainer.helpers import make_batch

    (body,) = blocks(path.read_text(), "train_config")
    cfg = parse_text(body, train_pb2.TrainConfig(), source=source_of(path))
    assert cfg.HasField("sparse_optimizer") and cfg.HasField("dense_optimizer")
    model = sharded_model(cfg.sparse_optimizer)
    opts = build_optimizers(model, cfg)
    gen = torch.Generator().manual_seed(0)
    before = {n: p.detach().clone() for n, p in model.named_parameters() if ".over." in f".{n}"}
    k = opts.wrapper.accumulation_steps
    for _ in range(k):
        kjt, labels = make_batch(16, gen)
        opts.zero_grad()
        with opts.wrapper.autocast():
            logits = model(kjt)
        opts.backward(torch.nn.functional.binary_cross_entropy_with_logits(logits.float(), labels))
        stepped = opts.step()
    assert stepped and opts.optimizer_steps == 1
    assert any(not torch.equal(before[n], p) for n, p in model.named_parameters() if n in before)


def test_the_values_of_the_training_loop_fields() -> None:
    """What the copies set reaches the training loop (values read from the files by eye)."""
    by_name = {p.stem.split("__")[-1]: p for p in TRAIN_CONFIGS}

    def load(name: str) -> train_pb2.TrainConfig:
        (body,) = blocks(by_name[name].read_text(), "train_config")
        return parse_text(body, train_pb2.TrainConfig())

    clip = load("multi_tower_din_fg_mock_gradient_clipping")
    assert (clip.grad_clipping.clipping_type, clip.grad_clipping.max_gradient) == ("norm", 1.0)
    assert clip.sparse_optimizer.adagrad_optimizer.gradient_clipping
    ga = load("multi_tower_din_fg_mock_fp16_ga")
    assert (ga.mixed_precision, ga.gradient_accumulation_steps) == ("FP16", 4)
    assert ga.HasField("grad_scaler") and ga.grad_scaler.init_scale == 65536.0
    hstu = load("dlrm_hstu_kuairand_1k")
    assert (hstu.mixed_precision, hstu.save_checkpoints_epochs) == ("BF16", 1)


def test_grad_clipping_config_wraps_the_optimizer(sharded_model) -> None:
    path = next(p for p in TRAIN_CONFIGS if "gradient_clipping" in p.name)
    (body,) = blocks(path.read_text(), "train_config")
    cfg = parse_text(body, train_pb2.TrainConfig())
    opts = build_optimizers(sharded_model(cfg.sparse_optimizer), cfg)
    assert isinstance(opts.wrapper.optimizer, GradientClippingOptimizer)


@pytest.mark.parametrize("path", LOSSES, ids=lambda p: p.stem)
def test_losses_blocks_parse_and_build(path: Path) -> None:
    bodies = blocks(path.read_text(), "losses")
    assert bodies
    for body in bodies:
        cfg = parse_text(body, loss_pb2.LossConfig(), source=source_of(path))
        module = create_loss(cfg)
        assert isinstance(module, torch.nn.Module)
        assert loss_name(cfg) in body
