"""Losses against torch.nn.functional and a brute-force JRC written out here."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from rankboard.protos import loss_pb2, parse_text
from rankboard.trainer.loss import (
    BinaryCrossEntropyLoss,
    BinaryFocalLoss,
    JRCLoss,
    L2Loss,
    SoftmaxCrossEntropyLoss,
    create_loss,
    loss_name,
)


def rand(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("s", [0.0, 0.1, 0.5])
def test_bce_with_label_smoothing(s: float) -> None:
    logits, labels = rand(32), (rand(32, seed=1) > 0).float()
    expected = F.binary_cross_entropy(torch.sigmoid(logits), labels * (1 - s) + s / 2)
    assert torch.allclose(BinaryCrossEntropyLoss(s)(logits, labels), expected, atol=1e-6)
    assert torch.allclose(BinaryCrossEntropyLoss(s)(logits, labels.long()), expected, atol=1e-6)


@pytest.mark.parametrize("s", [0.0, 0.2])
def test_softmax_ce_with_label_smoothing(s: float) -> None:
    logits, labels = rand(16, 5), torch.arange(16) % 5
    # written out: smoothed targets (1 - s) one-hot + s / c
    target = F.one_hot(labels, 5).float() * (1 - s) + s / 5
    expected = -(target * torch.log_softmax(logits, dim=1)).sum(1).mean()
    got = SoftmaxCrossEntropyLoss(s)(logits, labels)
    assert torch.allclose(got, expected, atol=1e-6)


def test_l2_loss() -> None:
    preds, labels = rand(10), rand(10, seed=2)
    assert torch.allclose(L2Loss()(preds, labels), ((preds - labels) ** 2).mean())


@pytest.mark.parametrize(("gamma", "alpha"), [(0.0, 0.5), (2.0, 0.25), (1.5, 0.9)])
def test_binary_focal_loss_value_and_detached_weight(gamma: float, alpha: float) -> None:
    logits = rand(64).requires_grad_()
    labels = (rand(64, seed=3) > 0).float()
    p = torch.sigmoid(logits.detach())
    weight = alpha * labels * (1 - p) ** gamma + (1 - alpha) * (1 - labels) * p**gamma
    bce = F.binary_cross_entropy_with_logits(logits, labels, reduction="none")
    expected = (weight * bce).mean()
    got = BinaryFocalLoss(gamma, alpha)(logits, labels)
    assert torch.allclose(got, expected, atol=1e-6)
    (grad,) = torch.autograd.grad(got, logits)
    # gradient flows only through BCE: weight * (p - y) / n
    assert torch.allclose(grad, weight * (p - labels) / 64, atol=1e-7)


def jrc_brute_force(logits, labels, sessions, alpha) -> float:
    n = len(labels)
    ce = 0.0
    for i in range(n):
        z = logits[i]
        ce += -(z[labels[i]] - math.log(math.exp(z[0]) + math.exp(z[1])))
    ce /= n
    gen = 0.0
    for i in range(n):
        cls = labels[i]  # positives compete by logit 1 against negatives, and vice versa
        pool = [j for j in range(n) if j == i or (sessions[j] == sessions[i] and labels[j] != cls)]
        denominator = sum(math.exp(logits[j][cls]) for j in pool)
        gen += -(logits[i][cls] - math.log(denominator))
    gen /= n
    return alpha * ce + (1 - alpha) * gen


@settings(max_examples=40, deadline=None)
@given(
    rows=st.lists(
        st.tuples(st.floats(-4, 4), st.floats(-4, 4), st.integers(0, 1), st.integers(0, 3)),
        min_size=1,
        max_size=12,
    ),
    alpha=st.floats(0, 1),
)
def test_jrc_matches_brute_force(rows, alpha: float) -> None:
    logits = [[a, b] for a, b, _, _ in rows]
    labels = [y for _, _, y, _ in rows]
    sessions = [s for _, _, _, s in rows]
    got = JRCLoss(alpha)(
        torch.tensor(logits, dtype=torch.float64), torch.tensor(labels), torch.tensor(sessions)
    )
    assert got.item() == pytest.approx(
        jrc_brute_force(logits, labels, sessions, alpha), rel=1e-9, abs=1e-12
    )


def test_jrc_is_differentiable() -> None:
    logits = rand(20, 2).requires_grad_()
    labels, sessions = torch.arange(20) % 2, torch.arange(20) // 4
    JRCLoss(0.5)(logits, labels, sessions).backward()
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0


@pytest.mark.parametrize(
    ("logits", "labels", "sessions", "message"),
    [
        (torch.zeros(4), torch.zeros(4), torch.zeros(4, dtype=torch.long), r"\(n, 2\)"),
        (torch.zeros(4, 3), torch.zeros(4), torch.zeros(4, dtype=torch.long), r"\(n, 2\)"),
        (torch.zeros(4, 2), torch.zeros(3), torch.zeros(4, dtype=torch.long), "labels must be"),
        (torch.zeros(4, 2), torch.zeros(4), torch.zeros(5, dtype=torch.long), "session ids must"),
        (torch.zeros(4, 2), torch.zeros(4), torch.zeros(4), "must be integers"),
        (torch.zeros(4, 2), torch.full((4,), 2), torch.zeros(4, dtype=torch.long), "0 or 1"),
        (torch.zeros(0, 2), torch.zeros(0), torch.zeros(0, dtype=torch.long), "empty"),
    ],
)
def test_jrc_rejects_bad_inputs(logits, labels, sessions, message) -> None:
    with pytest.raises(ValueError, match=message):
        JRCLoss()(logits, labels, sessions)


def test_bad_parameters_and_shapes_raise() -> None:
    with pytest.raises(ValueError, match="gamma must be >= 0"):
        BinaryFocalLoss(gamma=-1)
    for alpha in (0.0, 1.0):
        with pytest.raises(ValueError, match=r"alpha must be in \(0, 1\)"):
            BinaryFocalLoss(alpha=alpha)
    with pytest.raises(ValueError, match="label_smoothing"):
        BinaryCrossEntropyLoss(1.5)
    with pytest.raises(ValueError, match=r"JRCLoss\.alpha"):
        JRCLoss(alpha=2)
    with pytest.raises(ValueError, match="same shape"):
        BinaryCrossEntropyLoss()(torch.zeros(3), torch.zeros(3, 1))
    with pytest.raises(ValueError, match=r"logits \(n, c\)"):
        SoftmaxCrossEntropyLoss()(torch.zeros(3), torch.zeros(3))


def test_builder_passes_config_values_and_names() -> None:
    cfg = parse_text("binary_focal_loss { gamma: 1.5 alpha: 0.25 }", loss_pb2.LossConfig())
    loss = create_loss(cfg)
    assert (loss.gamma, loss.alpha) == (1.5, 0.25)
    assert loss_name(cfg) == "binary_focal_loss"
    jrc = create_loss(
        parse_text('jrc_loss { session_name: "rid" alpha: 0.7 }', loss_pb2.LossConfig())
    )
    assert (jrc.alpha, jrc.session_name) == (0.7, "rid")
    bce = create_loss(
        parse_text("binary_cross_entropy { label_smoothing: 0.1 }", loss_pb2.LossConfig())
    )
    assert bce.label_smoothing == 0.1
    with pytest.raises(ValueError, match="no loss set"):
        create_loss(loss_pb2.LossConfig())
