"""Done-when: a tzrec-style train config trains a sharded torchrec model on CPU.

The config has a fused sparse Adagrad with an initial accumulator, a dense
Adam and part optimizers with schedules of their own (and one inherited); the
test checks the learning rate of every param group at every step against the
formulas written out here, the accumulator before the first step, and that the
loss goes down over 50 steps.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torchrec.optim.keyed import CombinedOptimizer

from rankboard.protos import parse_text, train_pb2
from rankboard.trainer.optim import build_optimizers
from tests.trainer.helpers import make_batch

CONFIG = r"""
sparse_optimizer {
    adagrad_optimizer {
        lr: 0.1
        initial_accumulator_value: 0.1
    }
    cosine_annealing_learning_rate {
        T_max: 40
        min_learning_rate: 0.02
        warmup_learning_rate: 0.01
        warmup_size: 5
    }
}
dense_optimizer {
    adam_optimizer {
        lr: 0.01
        beta1: 0.9
        beta2: 0.999
    }
    exponential_decay_learning_rate {
        decay_size: 10
        decay_factor: 0.7
        staircase: true
        warmup_learning_rate: 0.001
        warmup_size: 5
        min_learning_rate: 0.002
    }
    part_optimizers {
        sgd_optimizer {
            lr: 0.1
            momentum: 0.9
        }
        regex_pattern: "over\\.2\\.weight"
        manual_step_learning_rate {
            schedule_sizes: [10, 30]
            learning_rates: [0.05, 0.02]
            warmup: true
        }
    }
    part_optimizers {
        adamw_optimizer {
            lr: 0.02
            weight_decay: 0.01
        }
        regex_pattern: "over\\.0\\.bias"
        cosine_annealing_warm_restarts_learning_rate {
            T_0: 10
            T_mult: 2
        }
    }
    part_optimizers {
        adagrad_optimizer {
            lr: 0.03
        }
        regex_pattern: "over\\.2\\.bias"
    }
}
num_steps: 50
save_checkpoints_steps: 1000
log_step_count_steps: 10
"""


def warmup(base, s, start, size):
    return start + (base - start) * s / size


def sparse_lr(s):
    base = 0.1
    if s < 5:
        return warmup(base, s, 0.01, 5)
    t = min(s - 5, 40)
    return 0.02 + (base - 0.02) * (1 + math.cos(math.pi * t / 40)) / 2


def exponential(base):
    def lr(s):
        if s < 5:
            return warmup(base, s, 0.001, 5)
        return max(base * 0.7 ** math.floor((s - 5) / 10), 0.002)

    return lr


def manual_lr(s):
    if s > 30:
        return 0.02
    if s > 10:
        return 0.05
    return 0.1 + (0.05 - 0.1) * s / 10


def restarts_lr(s):
    base, start, period = 0.02, 0, 10
    while s >= start + period:
        start, period = start + period, period * 2
    return base * (1 + math.cos(math.pi * (s - start) / period)) / 2


EXPECTED = {
    "sparse": sparse_lr,
    "dense": exponential(0.01),  # Adam on over.0.weight
    "part_0": manual_lr,  # SGD on over.2.weight
    "part_1": restarts_lr,  # AdamW on over.0.bias
    "part_2": exponential(0.03),  # Adagrad on over.2.bias, schedule inherited
}


def test_tzrec_config_trains_sharded_model_with_scheduled_optimizers(sharded_model) -> None:
    cfg = parse_text(CONFIG, train_pb2.TrainConfig())
    model = sharded_model(cfg.sparse_optimizer)
    opts = build_optimizers(model, cfg)

    assert isinstance(opts.optimizer, CombinedOptimizer)
    assert [name for name, _ in opts.members] == list(EXPECTED)
    member_params = {name: sorted(opt.params) for name, opt in opts.members}
    assert member_params["dense"] == ["over.0.weight"]
    assert member_params["part_0"] == ["over.2.weight"]
    assert member_params["part_1"] == ["over.0.bias"]
    assert member_params["part_2"] == ["over.2.bias"]
    assert len(opts.schedulers) == len(EXPECTED)
    # every param group of the combined optimizer belongs to exactly one member
    n_groups = sum(len(opt.param_groups) for _, opt in opts.members)
    assert len(opts.optimizer.param_groups) == n_groups

    # the sparse accumulators hold initial_accumulator_value before the first step
    for param_state in model.fused_optimizer.state.values():
        for key, state in param_state.items():
            assert str(key).endswith("momentum1")
            for shard in state.local_shards():
                assert torch.allclose(shard.tensor, torch.full_like(shard.tensor, 0.1))

    gen = torch.Generator().manual_seed(0)
    losses = []
    for s in range(cfg.num_steps):
        for name, opt in opts.members:
            for group in opt.param_groups:
                assert math.isclose(group["lr"], EXPECTED[name](s), rel_tol=1e-6), (name, s)
        kjt, labels = make_batch(64, gen)
        opts.zero_grad()
        loss = F.binary_cross_entropy_with_logits(model(kjt), labels)
        opts.backward(loss)
        assert opts.step()
        losses.append(loss.item())

    first, last = sum(losses[:10]) / 10, sum(losses[-10:]) / 10
    assert last < 0.8 * first, (first, last)
