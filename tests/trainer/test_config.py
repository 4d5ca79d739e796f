"""tzrec-style config text: parses, names the line of an error, rejects unknown fields."""

from __future__ import annotations

import pytest

from rankboard.protos import ConfigError, loss_pb2, optimizer_pb2, parse_text, train_pb2
from rankboard.trainer.loss import create_loss
from rankboard.trainer.optim import create_dense_optimizer, create_sparse_optimizer

# The train_config block of a tzrec example pipeline config (deepfm on criteo style).
TZREC_PIPELINE = """
train_input_path: "data/criteo_train.parquet"
model_dir: "experiments/deepfm_criteo"
train_config {
    sparse_optimizer {
        adagrad_optimizer {
            lr: 0.001
        }
        constant_learning_rate {
        }
    }
    dense_optimizer {
        adam_optimizer {
            lr: 0.001
        }
        constant_learning_rate {
        }
    }
    num_epochs: 1
    save_checkpoints_steps: 2000
    log_step_count_steps: 200
    use_tensorboard: false
    cudnn_allow_tf32: true
    tensorboard_summaries: "loss"
    tensorboard_summaries: "learning_rate"
}
eval_config {
}
"""


def block(text: str, name: str) -> str:
    """The body of the top-level ``name { ... }`` block of a pipeline config text."""
    start = text.index(name + " {") + len(name) + 2
    depth, i = 1, start
    while depth:
        depth += {"{": 1, "}": -1}.get(text[i], 0)
        i += 1
    return text[start : i - 1]


def test_real_tzrec_train_config_parses() -> None:
    cfg = parse_text(block(TZREC_PIPELINE, "train_config"), train_pb2.TrainConfig())
    assert cfg.num_epochs == 1
    assert cfg.save_checkpoints_steps == 2000
    assert cfg.log_step_count_steps == 200
    assert not cfg.use_tensorboard
    assert list(cfg.tensorboard_summaries) == ["loss", "learning_rate"]
    assert cfg.gradient_accumulation_steps == 1  # rankboard default
    sparse_cls, sparse_kwargs = create_sparse_optimizer(cfg.sparse_optimizer)
    assert sparse_cls.__name__ == "Adagrad"
    assert sparse_kwargs["lr"] == 0.001
    dense_cls, _ = create_dense_optimizer(cfg.dense_optimizer)
    assert dense_cls.__name__ == "Adam"


def test_parse_error_names_the_line() -> None:
    text = "sparse_optimizer {\n  sgd_optimizer {\n    lr: fast\n  }\n}\n"
    with pytest.raises(ConfigError, match=r"train\.config line 3"):
        parse_text(text, train_pb2.TrainConfig(), source="train.config")


def test_unknown_field_is_rejected_with_its_line() -> None:
    text = "num_steps: 10\nlearning_rate_typo: 0.1\n"
    with pytest.raises(ConfigError, match=r"line 2.*learning_rate_typo"):
        parse_text(text, train_pb2.TrainConfig())
    with pytest.raises(ConfigError, match=r"line 1.*momentum"):
        parse_text("adam_optimizer { lr: 1 momentum: 0.9 }", optimizer_pb2.DenseOptimizer())


def test_missing_required_field_is_named() -> None:
    with pytest.raises(ConfigError, match=r"part_optimizers\[0\]\.regex_pattern"):
        parse_text(
            "sgd_optimizer { lr: 1 } part_optimizers { sgd_optimizer { lr: 1 } }",
            optimizer_pb2.DenseOptimizer(),
        )


def test_bad_enum_value_is_rejected() -> None:
    with pytest.raises(ConfigError, match="line 1"):
        parse_text(
            "rowwise_adagrad_optimizer { lr: 1 weight_decay_mode: SOMETIMES }",
            optimizer_pb2.SparseOptimizer(),
        )


def test_two_oneof_members_are_rejected() -> None:
    with pytest.raises(ConfigError, match="line 2"):
        parse_text(
            "sgd_optimizer { lr: 1 }\nadam_optimizer { lr: 1 }", optimizer_pb2.DenseOptimizer()
        )


def test_tzrec_loss_blocks_parse_and_build() -> None:
    names = []
    for text in (
        "binary_cross_entropy {}",
        "softmax_cross_entropy { label_smoothing: 0.1 }",
        "l2_loss {}",
        'jrc_loss { session_name: "request_id" }',
        "binary_focal_loss { gamma: 2.0 alpha: 0.25 }",
    ):
        names.append(type(create_loss(parse_text(text, loss_pb2.LossConfig()))).__name__)
    assert names == [
        "BinaryCrossEntropyLoss",
        "SoftmaxCrossEntropyLoss",
        "L2Loss",
        "JRCLoss",
        "BinaryFocalLoss",
    ]
    with pytest.raises(ConfigError, match="session_name"):
        parse_text("jrc_loss { alpha: 0.5 }", loss_pb2.LossConfig())
