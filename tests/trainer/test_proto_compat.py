"""The config protos keep tzrec's field names, numbers, types, labels and defaults.

The reference below is written out from TorchEasyRec's ``tzrec/protos`` (0.9.x):
every field tzrec has must exist in rankboard's message with the same number,
type, label and default, so that tzrec's text configs parse to the same values
and its binary messages decode unchanged. rankboard may only add fields.
"""

from __future__ import annotations

import math

import pytest
from google.protobuf.descriptor import FieldDescriptor

from rankboard.protos import loss_pb2, metric_pb2, optimizer_pb2, parse_text, train_pb2

FLOAT, BOOL, STRING, UINT32, UINT64, ENUM, MSG = (
    FieldDescriptor.TYPE_FLOAT,
    FieldDescriptor.TYPE_BOOL,
    FieldDescriptor.TYPE_STRING,
    FieldDescriptor.TYPE_UINT32,
    FieldDescriptor.TYPE_UINT64,
    FieldDescriptor.TYPE_ENUM,
    FieldDescriptor.TYPE_MESSAGE,
)
OPT, REQ, REP = "optional", "required", "repeated"

# (name, number, type, label, default); default None = no explicit default
Field = tuple[str, int, int, str, object]

_LR_ONEOF: list[Field] = [
    ("constant_learning_rate", 101, MSG, OPT, None),
    ("exponential_decay_learning_rate", 102, MSG, OPT, None),
    ("manual_step_learning_rate", 103, MSG, OPT, None),
]
_DENSE_ONEOF: list[Field] = [
    ("sgd_optimizer", 1, MSG, OPT, None),
    ("adagrad_optimizer", 2, MSG, OPT, None),
    ("adam_optimizer", 3, MSG, OPT, None),
    ("adamw_optimizer", 4, MSG, OPT, None),
]
_CLIP = [("gradient_clipping", BOOL, OPT, False), ("max_gradient", FLOAT, OPT, 1.0)]
_ADAM_LIKE: list[Field] = [
    ("lr", 1, FLOAT, REQ, 0.002),
    ("beta1", 2, FLOAT, OPT, 0.9),
    ("beta2", 3, FLOAT, OPT, 0.999),
    ("weight_decay", 4, FLOAT, OPT, 0.0),
    ("gradient_clipping", 5, BOOL, OPT, False),
    ("max_gradient", 6, FLOAT, OPT, 1.0),
]

TZREC: dict[type, list[Field]] = {
    optimizer_pb2.SparseOptimizer: [
        ("sgd_optimizer", 1, MSG, OPT, None),
        ("adagrad_optimizer", 2, MSG, OPT, None),
        ("adam_optimizer", 3, MSG, OPT, None),
        ("lars_sgd_optimizer", 4, MSG, OPT, None),
        ("lamb_optimizer", 5, MSG, OPT, None),
        ("partial_rowwise_lamb_optimizer", 6, MSG, OPT, None),
        ("partial_rowwise_adam_optimizer", 7, MSG, OPT, None),
        ("rowwise_adagrad_optimizer", 8, MSG, OPT, None),
        *_LR_ONEOF,
    ],
    optimizer_pb2.DenseOptimizer: [
        *_DENSE_ONEOF,
        *_LR_ONEOF,
        ("part_optimizers", 201, MSG, REP, None),
    ],
    optimizer_pb2.PartOptimizer: [
        *_DENSE_ONEOF,
        ("regex_pattern", 5, STRING, REQ, None),
        *_LR_ONEOF,
    ],
    optimizer_pb2.FusedSGDOptimizer: [
        ("lr", 1, FLOAT, REQ, 0.002),
        *[(n, i, t, lab, d) for i, (n, t, lab, d) in enumerate(_CLIP, start=2)],
    ],
    optimizer_pb2.FusedAdagradOptimizer: [
        ("lr", 1, FLOAT, REQ, 0.002),
        *[(n, i, t, lab, d) for i, (n, t, lab, d) in enumerate(_CLIP, start=2)],
    ],
    optimizer_pb2.FusedAdamOptimizer: _ADAM_LIKE,
    optimizer_pb2.FusedLarsSGDOptimizer: [
        ("lr", 1, FLOAT, REQ, 0.002),
        ("momentum", 2, FLOAT, OPT, 0.9),
        ("weight_decay", 3, FLOAT, OPT, 0.0),
        *[(n, i, t, lab, d) for i, (n, t, lab, d) in enumerate(_CLIP, start=4)],
    ],
    optimizer_pb2.FusedLAMBOptimizer: _ADAM_LIKE,
    optimizer_pb2.FusedPartialRowWiseLAMBOptimizer: _ADAM_LIKE,
    optimizer_pb2.FusedPartialRowWiseAdamOptimizer: _ADAM_LIKE,
    optimizer_pb2.FusedRowWiseAdagradOptimizer: [
        ("lr", 1, FLOAT, REQ, 0.002),
        ("weight_decay", 2, FLOAT, OPT, 0.0),
        ("weight_decay_mode", 3, ENUM, OPT, "NONE"),
        *[(n, i, t, lab, d) for i, (n, t, lab, d) in enumerate(_CLIP, start=4)],
    ],
    optimizer_pb2.SGDOptimizer: [
        ("lr", 1, FLOAT, REQ, 0.002),
        ("momentum", 2, FLOAT, OPT, 0.9),
        ("weight_decay", 3, FLOAT, OPT, 0.0),
    ],
    optimizer_pb2.AdagradOptimizer: [
        ("lr", 1, FLOAT, REQ, 0.002),
        ("weight_decay", 2, FLOAT, OPT, 0.0),
    ],
    optimizer_pb2.AdamOptimizer: _ADAM_LIKE[:4],
    optimizer_pb2.AdamWOptimizer: _ADAM_LIKE[:4],
    optimizer_pb2.ConstantLR: [],
    optimizer_pb2.ExponentialDecayLR: [
        ("decay_size", 1, UINT32, OPT, None),
        ("decay_factor", 2, FLOAT, OPT, 0.95),
        ("staircase", 3, BOOL, OPT, True),
        ("warmup_learning_rate", 4, FLOAT, OPT, 0.0),
        ("warmup_size", 5, UINT32, OPT, 0),
        ("min_learning_rate", 6, FLOAT, OPT, 0.0),
        ("by_epoch", 7, BOOL, OPT, False),
    ],
    optimizer_pb2.ManualStepLR: [
        ("schedule_sizes", 1, UINT32, REP, None),
        ("learning_rates", 2, FLOAT, REP, None),
        ("warmup", 3, BOOL, OPT, False),
        ("by_epoch", 4, BOOL, OPT, False),
    ],
    loss_pb2.LossConfig: [
        ("binary_cross_entropy", 1, MSG, OPT, None),
        ("softmax_cross_entropy", 2, MSG, OPT, None),
        ("l2_loss", 3, MSG, OPT, None),
        ("jrc_loss", 4, MSG, OPT, None),
        ("binary_focal_loss", 5, MSG, OPT, None),
    ],
    loss_pb2.BinaryCrossEntropy: [],
    loss_pb2.SoftmaxCrossEntropy: [("label_smoothing", 1, FLOAT, OPT, 0.0)],
    loss_pb2.L2Loss: [],
    loss_pb2.JRCLoss: [
        ("session_name", 1, STRING, REQ, None),
        ("alpha", 2, FLOAT, OPT, 0.5),
    ],
    loss_pb2.BinaryFocalLoss: [
        ("gamma", 1, FLOAT, OPT, 2.0),
        ("alpha", 2, FLOAT, OPT, 0.5),
    ],
    metric_pb2.AUC: [("thresholds", 1, UINT32, OPT, 200)],
    metric_pb2.MulticlassAUC: [
        ("thresholds", 1, UINT32, OPT, 200),
        ("average", 2, STRING, OPT, "macro"),
    ],
    metric_pb2.RecallAtK: [("top_k", 1, UINT32, OPT, 5)],
    metric_pb2.MeanAbsoluteError: [],
    metric_pb2.MeanSquaredError: [],
    metric_pb2.Accuracy: [
        ("threshold", 1, FLOAT, OPT, 0.5),
        ("top_k", 2, UINT32, OPT, 1),
    ],
    metric_pb2.GroupedAUC: [("grouping_key", 1, STRING, REQ, None)],
    metric_pb2.XAUC: [
        ("sample_ratio", 1, FLOAT, OPT, 1e-3),
        ("max_pairs", 2, UINT64, OPT, None),
        ("in_batch", 3, BOOL, OPT, False),
    ],
    metric_pb2.GroupedXAUC: [
        ("grouping_key", 1, STRING, REQ, None),
        ("max_pairs_per_group", 2, UINT64, OPT, 100),
    ],
    metric_pb2.MetricConfig: [
        ("auc", 1, MSG, OPT, None),
        ("multiclass_auc", 2, MSG, OPT, None),
        ("recall_at_k", 3, MSG, OPT, None),
        ("mean_absolute_error", 4, MSG, OPT, None),
        ("mean_squared_error", 5, MSG, OPT, None),
        ("accuracy", 6, MSG, OPT, None),
        ("grouped_auc", 7, MSG, OPT, None),
        ("xauc", 8, MSG, OPT, None),
        ("grouped_xauc", 9, MSG, OPT, None),
    ],
    train_pb2.GradScaler: [
        ("init_scale", 1, FLOAT, OPT, 65536.0),
        ("growth_factor", 2, FLOAT, OPT, 2.0),
        ("backoff_factor", 3, FLOAT, OPT, 0.5),
        ("growth_interval", 4, UINT32, OPT, 2000),
    ],
    train_pb2.TrainConfig: [
        ("sparse_optimizer", 1, MSG, REQ, None),
        ("dense_optimizer", 2, MSG, REQ, None),
        ("num_steps", 3, UINT32, OPT, None),
        ("num_epochs", 4, UINT32, OPT, None),
        ("save_checkpoints_steps", 5, UINT32, OPT, 1000),
        ("fine_tune_checkpoint", 6, STRING, OPT, None),
        ("fine_tune_ckpt_param_map", 7, STRING, OPT, None),
        ("log_step_count_steps", 8, UINT32, OPT, 100),
        ("is_profiling", 9, BOOL, OPT, False),
        ("use_tensorboard", 10, BOOL, OPT, True),
        ("save_checkpoints_epochs", 11, UINT32, OPT, None),
        ("tensorboard_summaries", 12, STRING, REP, None),
        ("cudnn_allow_tf32", 13, BOOL, OPT, True),
        ("cuda_matmul_allow_tf32", 14, BOOL, OPT, False),
        # 15: global_embedding_constraints, not supported (reserved in rankboard)
        ("mixed_precision", 16, STRING, OPT, None),
        ("grad_scaler", 17, MSG, OPT, None),
        ("gradient_accumulation_steps", 18, UINT32, OPT, None),
    ],
}

# Documented, deliberate differences: (message, field) -> what rankboard has instead.
DEVIATIONS: dict[tuple[str, str], str] = {
    # a model may have no embedding tables (or no dense parameters)
    ("TrainConfig", "sparse_optimizer"): "label optional",
    ("TrainConfig", "dense_optimizer"): "label optional",
    # tzrec treats 0 and 1 alike (no accumulation); rankboard states 1
    ("TrainConfig", "gradient_accumulation_steps"): "default 1",
}


def _label(field: FieldDescriptor) -> str:
    if field.is_repeated:
        return REP
    return REQ if field.is_required else OPT


def _default(field: FieldDescriptor) -> object:
    if not field.has_default_value:
        return None
    if field.type == ENUM:
        return field.enum_type.values_by_number[field.default_value].name
    return field.default_value


@pytest.mark.parametrize("cls", list(TZREC), ids=lambda c: c.DESCRIPTOR.name)
def test_every_tzrec_field_is_kept(cls: type) -> None:
    ours = cls.DESCRIPTOR.fields_by_name
    for name, number, ftype, label, default in TZREC[cls]:
        assert name in ours, f"{cls.DESCRIPTOR.name}.{name} is missing"
        field = ours[name]
        assert field.number == number, f"{cls.DESCRIPTOR.name}.{name} number"
        assert field.type == ftype, f"{cls.DESCRIPTOR.name}.{name} type"
        deviation = DEVIATIONS.get((cls.DESCRIPTOR.name, name), "")
        if not deviation.startswith("label"):
            assert _label(field) == label, f"{cls.DESCRIPTOR.name}.{name} label"
        if not deviation.startswith("default"):
            got = _default(field)
            if isinstance(default, float):
                # float32 on the wire: compare at float32 precision
                assert math.isclose(got, default, rel_tol=1e-7), f"{cls.DESCRIPTOR.name}.{name}"
            else:
                assert got == default, f"{cls.DESCRIPTOR.name}.{name} default"


def test_deviations_are_what_they_say() -> None:
    fields = train_pb2.TrainConfig.DESCRIPTOR.fields_by_name
    assert not fields["sparse_optimizer"].is_required
    assert not fields["dense_optimizer"].is_required
    assert train_pb2.TrainConfig().gradient_accumulation_steps == 1


def test_rankboard_additions_do_not_reuse_tzrec_numbers() -> None:
    for cls, ref in TZREC.items():
        taken = {number: name for name, number, *_ in ref}
        for field in cls.DESCRIPTOR.fields:
            if field.number in taken:
                assert field.name == taken[field.number], (cls.DESCRIPTOR.name, field.number)
    train_numbers = {f.number for f in train_pb2.TrainConfig.DESCRIPTOR.fields}
    assert 15 not in train_numbers  # tzrec's global_embedding_constraints


def test_tzrec_training_loop_fields_parse_to_their_values() -> None:
    cfg = parse_text(
        """
        sparse_optimizer { rowwise_adagrad_optimizer { lr: 0.01 } }
        dense_optimizer { adam_optimizer { lr: 0.001 } }
        mixed_precision: "BF16"
        grad_scaler { init_scale: 1024 growth_interval: 100 }
        gradient_accumulation_steps: 4
        """,
        train_pb2.TrainConfig(),
    )
    assert cfg.mixed_precision == "BF16"
    assert (cfg.grad_scaler.init_scale, cfg.grad_scaler.growth_interval) == (1024.0, 100)
    assert cfg.gradient_accumulation_steps == 4
    # the wire form carries tzrec's field number: key (18 << 3 | varint) = 144 = 0x90 0x01
    wire = train_pb2.TrainConfig(gradient_accumulation_steps=4).SerializeToString()
    assert wire == b"\x90\x01\x04"
