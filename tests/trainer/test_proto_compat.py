"""The config protos keep tzrec's messages, field names, numbers, types, labels and defaults.

The reference below is data written out from TorchEasyRec's ``tzrec/protos``
(optimizer.proto, loss.proto, metric.proto, train.proto) at commit
54cac3165a2adece9a932616463a5b6a2095b0ce (2026-08-19, tzrec's public HEAD when
pinned): every message and enum tzrec has must exist in rankboard's module under
the same name, and every field with the same number, type (and message/enum type
name), label, default and oneof, so that tzrec's text configs parse to the same
values and its binary messages decode unchanged. rankboard may only add fields
and messages; the few deliberate differences are listed in ``DEVIATIONS``.
"""

from __future__ import annotations

import math

import pytest
from google.protobuf.descriptor import Descriptor, FieldDescriptor

from rankboard.protos import loss_pb2, metric_pb2, optimizer_pb2, parse_text, train_pb2

TZREC_COMMIT = "54cac3165a2adece9a932616463a5b6a2095b0ce"

# (name, number, type[:message or enum name], label, default as protoc text or None, oneof)
Field = tuple[str, int, str, str, object, object]

MODULES = {
    "optimizer.proto": optimizer_pb2,
    "loss.proto": loss_pb2,
    "metric.proto": metric_pb2,
    "train.proto": train_pb2,
}

TZREC_MESSAGES: dict[tuple[str, str], list[Field]] = {
    ("optimizer.proto", "SparseOptimizer"): [
        ("sgd_optimizer", 1, "MESSAGE:FusedSGDOptimizer", "optional", None, "optimizer"),
        ("adagrad_optimizer", 2, "MESSAGE:FusedAdagradOptimizer", "optional", None, "optimizer"),
        ("adam_optimizer", 3, "MESSAGE:FusedAdamOptimizer", "optional", None, "optimizer"),
        ("lars_sgd_optimizer", 4, "MESSAGE:FusedLarsSGDOptimizer", "optional", None, "optimizer"),
        ("lamb_optimizer", 5, "MESSAGE:FusedLAMBOptimizer", "optional", None, "optimizer"),
        (
            "partial_rowwise_lamb_optimizer",
            6,
            "MESSAGE:FusedPartialRowWiseLAMBOptimizer",
            "optional",
            None,
            "optimizer",
        ),
        (
            "partial_rowwise_adam_optimizer",
            7,
            "MESSAGE:FusedPartialRowWiseAdamOptimizer",
            "optional",
            None,
            "optimizer",
        ),
        (
            "rowwise_adagrad_optimizer",
            8,
            "MESSAGE:FusedRowWiseAdagradOptimizer",
            "optional",
            None,
            "optimizer",
        ),
        ("adadelta_optimizer", 9, "MESSAGE:FusedAdadeltaOptimizer", "optional", None, "optimizer"),
        ("rmsprop_optimizer", 10, "MESSAGE:FusedRMSpropOptimizer", "optional", None, "optimizer"),
        ("constant_learning_rate", 101, "MESSAGE:ConstantLR", "optional", None, "learning_rate"),
        (
            "exponential_decay_learning_rate",
            102,
            "MESSAGE:ExponentialDecayLR",
            "optional",
            None,
            "learning_rate",
        ),
        (
            "manual_step_learning_rate",
            103,
            "MESSAGE:ManualStepLR",
            "optional",
            None,
            "learning_rate",
        ),
        (
            "cosine_annealing_learning_rate",
            104,
            "MESSAGE:CosineAnnealingLR",
            "optional",
            None,
            "learning_rate",
        ),
        (
            "cosine_annealing_warm_restarts_learning_rate",
            105,
            "MESSAGE:CosineAnnealingWarmRestartsLR",
            "optional",
            None,
            "learning_rate",
        ),
    ],
    ("optimizer.proto", "EMAConfig"): [
        ("decay", 1, "FLOAT", "optional", "0.999", None),
    ],
    ("optimizer.proto", "DenseOptimizer"): [
        ("sgd_optimizer", 1, "MESSAGE:SGDOptimizer", "optional", None, "optimizer"),
        ("adagrad_optimizer", 2, "MESSAGE:AdagradOptimizer", "optional", None, "optimizer"),
        ("adam_optimizer", 3, "MESSAGE:AdamOptimizer", "optional", None, "optimizer"),
        ("adamw_optimizer", 4, "MESSAGE:AdamWOptimizer", "optional", None, "optimizer"),
        ("adadelta_optimizer", 5, "MESSAGE:AdadeltaOptimizer", "optional", None, "optimizer"),
        ("rmsprop_optimizer", 6, "MESSAGE:RMSpropOptimizer", "optional", None, "optimizer"),
        ("constant_learning_rate", 101, "MESSAGE:ConstantLR", "optional", None, "learning_rate"),
        (
            "exponential_decay_learning_rate",
            102,
            "MESSAGE:ExponentialDecayLR",
            "optional",
            None,
            "learning_rate",
        ),
        (
            "manual_step_learning_rate",
            103,
            "MESSAGE:ManualStepLR",
            "optional",
            None,
            "learning_rate",
        ),
        (
            "cosine_annealing_learning_rate",
            104,
            "MESSAGE:CosineAnnealingLR",
            "optional",
            None,
            "learning_rate",
        ),
        (
            "cosine_annealing_warm_restarts_learning_rate",
            105,
            "MESSAGE:CosineAnnealingWarmRestartsLR",
            "optional",
            None,
            "learning_rate",
        ),
        ("part_optimizers", 201, "MESSAGE:PartOptimizer", "repeated", None, None),
        ("ema", 202, "MESSAGE:EMAConfig", "optional", None, None),
    ],
    ("optimizer.proto", "PartOptimizer"): [
        ("sgd_optimizer", 1, "MESSAGE:SGDOptimizer", "optional", None, "optimizer"),
        ("adagrad_optimizer", 2, "MESSAGE:AdagradOptimizer", "optional", None, "optimizer"),
        ("adam_optimizer", 3, "MESSAGE:AdamOptimizer", "optional", None, "optimizer"),
        ("adamw_optimizer", 4, "MESSAGE:AdamWOptimizer", "optional", None, "optimizer"),
        ("adadelta_optimizer", 6, "MESSAGE:AdadeltaOptimizer", "optional", None, "optimizer"),
        ("rmsprop_optimizer", 7, "MESSAGE:RMSpropOptimizer", "optional", None, "optimizer"),
        ("regex_pattern", 5, "STRING", "required", None, None),
        ("constant_learning_rate", 101, "MESSAGE:ConstantLR", "optional", None, "learning_rate"),
        (
            "exponential_decay_learning_rate",
            102,
            "MESSAGE:ExponentialDecayLR",
            "optional",
            None,
            "learning_rate",
        ),
        (
            "manual_step_learning_rate",
            103,
            "MESSAGE:ManualStepLR",
            "optional",
            None,
            "learning_rate",
        ),
        (
            "cosine_annealing_learning_rate",
            104,
            "MESSAGE:CosineAnnealingLR",
            "optional",
            None,
            "learning_rate",
        ),
        (
            "cosine_annealing_warm_restarts_learning_rate",
            105,
            "MESSAGE:CosineAnnealingWarmRestartsLR",
            "optional",
            None,
            "learning_rate",
        ),
    ],
    ("optimizer.proto", "FusedSGDOptimizer"): [
        ("lr", 1, "FLOAT", "required", "0.002", None),
        ("gradient_clipping", 2, "BOOL", "optional", "false", None),
        ("max_gradient", 3, "FLOAT", "optional", "1", None),
    ],
    ("optimizer.proto", "FusedAdagradOptimizer"): [
        ("lr", 1, "FLOAT", "required", "0.002", None),
        ("gradient_clipping", 2, "BOOL", "optional", "false", None),
        ("max_gradient", 3, "FLOAT", "optional", "1", None),
        ("initial_accumulator_value", 4, "FLOAT", "optional", "0", None),
    ],
    ("optimizer.proto", "FusedAdamOptimizer"): [
        ("lr", 1, "FLOAT", "required", "0.002", None),
        ("beta1", 2, "FLOAT", "optional", "0.9", None),
        ("beta2", 3, "FLOAT", "optional", "0.999", None),
        ("weight_decay", 4, "FLOAT", "optional", "0", None),
        ("gradient_clipping", 5, "BOOL", "optional", "false", None),
        ("max_gradient", 6, "FLOAT", "optional", "1", None),
    ],
    ("optimizer.proto", "FusedLarsSGDOptimizer"): [
        ("lr", 1, "FLOAT", "required", "0.002", None),
        ("momentum", 2, "FLOAT", "optional", "0.9", None),
        ("weight_decay", 3, "FLOAT", "optional", "0", None),
        ("gradient_clipping", 4, "BOOL", "optional", "false", None),
        ("max_gradient", 5, "FLOAT", "optional", "1", None),
    ],
    ("optimizer.proto", "FusedLAMBOptimizer"): [
        ("lr", 1, "FLOAT", "required", "0.002", None),
        ("beta1", 2, "FLOAT", "optional", "0.9", None),
        ("beta2", 3, "FLOAT", "optional", "0.999", None),
        ("weight_decay", 4, "FLOAT", "optional", "0", None),
        ("gradient_clipping", 5, "BOOL", "optional", "false", None),
        ("max_gradient", 6, "FLOAT", "optional", "1", None),
    ],
    ("optimizer.proto", "FusedPartialRowWiseLAMBOptimizer"): [
        ("lr", 1, "FLOAT", "required", "0.002", None),
        ("beta1", 2, "FLOAT", "optional", "0.9", None),
        ("beta2", 3, "FLOAT", "optional", "0.999", None),
        ("weight_decay", 4, "FLOAT", "optional", "0", None),
        ("gradient_clipping", 5, "BOOL", "optional", "false", None),
        ("max_gradient", 6, "FLOAT", "optional", "1", None),
    ],
    ("optimizer.proto", "FusedPartialRowWiseAdamOptimizer"): [
        ("lr", 1, "FLOAT", "required", "0.002", None),
        ("beta1", 2, "FLOAT", "optional", "0.9", None),
        ("beta2", 3, "FLOAT", "optional", "0.999", None),
        ("weight_decay", 4, "FLOAT", "optional", "0", None),
        ("gradient_clipping", 5, "BOOL", "optional", "false", None),
        ("max_gradient", 6, "FLOAT", "optional", "1", None),
    ],
    ("optimizer.proto", "FusedRowWiseAdagradOptimizer"): [
        ("lr", 1, "FLOAT", "required", "0.002", None),
        ("weight_decay", 2, "FLOAT", "optional", "0", None),
        ("weight_decay_mode", 3, "ENUM:WeightDecayMode", "optional", "NONE", None),
        ("gradient_clipping", 4, "BOOL", "optional", "false", None),
        ("max_gradient", 5, "FLOAT", "optional", "1", None),
    ],
    ("optimizer.proto", "FusedAdadeltaOptimizer"): [
        ("lr", 1, "FLOAT", "required", "0.002", None),
        ("rho", 2, "FLOAT", "optional", "0.95", None),
        ("eps", 3, "FLOAT", "optional", "1e-06", None),
        ("weight_decay", 4, "FLOAT", "optional", "0", None),
        ("gradient_clipping", 5, "BOOL", "optional", "false", None),
        ("max_gradient", 6, "FLOAT", "optional", "1", None),
    ],
    ("optimizer.proto", "FusedRMSpropOptimizer"): [
        ("lr", 1, "FLOAT", "required", "0.002", None),
        ("alpha", 2, "FLOAT", "optional", "0.99", None),
        ("eps", 3, "FLOAT", "optional", "1e-08", None),
        ("weight_decay", 4, "FLOAT", "optional", "0", None),
        ("gradient_clipping", 5, "BOOL", "optional", "false", None),
        ("max_gradient", 6, "FLOAT", "optional", "1", None),
    ],
    ("optimizer.proto", "SGDOptimizer"): [
        ("lr", 1, "FLOAT", "required", "0.002", None),
        ("momentum", 2, "FLOAT", "optional", "0.9", None),
        ("weight_decay", 3, "FLOAT", "optional", "0", None),
        ("dampening", 4, "FLOAT", "optional", "0", None),
        ("nesterov", 5, "BOOL", "optional", "false", None),
        ("fused", 6, "BOOL", "optional", "false", None),
    ],
    ("optimizer.proto", "AdagradOptimizer"): [
        ("lr", 1, "FLOAT", "required", "0.002", None),
        ("weight_decay", 2, "FLOAT", "optional", "0", None),
        ("initial_accumulator_value", 3, "FLOAT", "optional", "0", None),
        ("eps", 4, "FLOAT", "optional", "1e-10", None),
        ("fused", 5, "BOOL", "optional", "false", None),
    ],
    ("optimizer.proto", "AdamOptimizer"): [
        ("lr", 1, "FLOAT", "required", "0.002", None),
        ("beta1", 2, "FLOAT", "optional", "0.9", None),
        ("beta2", 3, "FLOAT", "optional", "0.999", None),
        ("weight_decay", 4, "FLOAT", "optional", "0", None),
        ("eps", 5, "FLOAT", "optional", "1e-08", None),
        ("amsgrad", 6, "BOOL", "optional", "false", None),
        ("fused", 7, "BOOL", "optional", "false", None),
    ],
    ("optimizer.proto", "AdamWOptimizer"): [
        ("lr", 1, "FLOAT", "required", "0.002", None),
        ("beta1", 2, "FLOAT", "optional", "0.9", None),
        ("beta2", 3, "FLOAT", "optional", "0.999", None),
        ("weight_decay", 4, "FLOAT", "optional", "0", None),
        ("eps", 5, "FLOAT", "optional", "1e-08", None),
        ("amsgrad", 6, "BOOL", "optional", "false", None),
        ("fused", 7, "BOOL", "optional", "false", None),
    ],
    ("optimizer.proto", "AdadeltaOptimizer"): [
        ("lr", 1, "FLOAT", "required", "0.002", None),
        ("rho", 2, "FLOAT", "optional", "0.95", None),
        ("eps", 3, "FLOAT", "optional", "1e-06", None),
        ("weight_decay", 4, "FLOAT", "optional", "0", None),
    ],
    ("optimizer.proto", "RMSpropOptimizer"): [
        ("lr", 1, "FLOAT", "required", "0.002", None),
        ("alpha", 2, "FLOAT", "optional", "0.99", None),
        ("eps", 3, "FLOAT", "optional", "1e-08", None),
        ("weight_decay", 4, "FLOAT", "optional", "0", None),
    ],
    ("optimizer.proto", "ConstantLR"): [],
    ("optimizer.proto", "ExponentialDecayLR"): [
        ("decay_size", 1, "UINT32", "optional", None, None),
        ("decay_factor", 2, "FLOAT", "optional", "0.95", None),
        ("staircase", 3, "BOOL", "optional", "true", None),
        ("warmup_learning_rate", 4, "FLOAT", "optional", "0", None),
        ("warmup_size", 5, "UINT32", "optional", "0", None),
        ("min_learning_rate", 6, "FLOAT", "optional", "0", None),
        ("by_epoch", 7, "BOOL", "optional", "false", None),
    ],
    ("optimizer.proto", "ManualStepLR"): [
        ("schedule_sizes", 1, "UINT32", "repeated", None, None),
        ("learning_rates", 2, "FLOAT", "repeated", None, None),
        ("warmup", 3, "BOOL", "optional", "false", None),
        ("by_epoch", 4, "BOOL", "optional", "false", None),
    ],
    ("optimizer.proto", "CosineAnnealingLR"): [
        ("T_max", 1, "UINT32", "optional", None, None),
        ("min_learning_rate", 2, "FLOAT", "optional", "0", None),
        ("warmup_learning_rate", 3, "FLOAT", "optional", "0", None),
        ("warmup_size", 4, "UINT32", "optional", "0", None),
        ("by_epoch", 5, "BOOL", "optional", "false", None),
    ],
    ("optimizer.proto", "CosineAnnealingWarmRestartsLR"): [
        ("T_0", 1, "UINT32", "optional", None, None),
        ("T_mult", 2, "UINT32", "optional", "1", None),
        ("min_learning_rate", 3, "FLOAT", "optional", "0", None),
        ("warmup_learning_rate", 4, "FLOAT", "optional", "0", None),
        ("warmup_size", 5, "UINT32", "optional", "0", None),
        ("by_epoch", 6, "BOOL", "optional", "false", None),
    ],
    ("train.proto", "GradScaler"): [
        ("init_scale", 1, "FLOAT", "optional", "65536", None),
        ("growth_factor", 2, "FLOAT", "optional", "2", None),
        ("backoff_factor", 3, "FLOAT", "optional", "0.5", None),
        ("growth_interval", 4, "UINT32", "optional", "2000", None),
    ],
    ("train.proto", "GradClipping"): [
        ("clipping_type", 1, "STRING", "optional", "none", None),
        ("max_gradient", 2, "FLOAT", "optional", "1", None),
        ("norm_type", 3, "FLOAT", "optional", "2", None),
        ("enable_global_grad_clip", 4, "BOOL", "optional", "false", None),
    ],
    ("train.proto", "FeatureStoreConfig"): [
        ("region", 1, "STRING", "required", None, None),
        ("project_name", 2, "STRING", "required", None, None),
        ("feature_view_name", 3, "STRING", "required", None, None),
        ("version", 5, "STRING", "required", None, None),
        ("endpoint", 6, "STRING", "optional", None, None),
        ("upload_batch_size", 7, "UINT32", "optional", "1000", None),
        ("max_retries", 8, "UINT32", "optional", "3", None),
        ("retry_backoff_secs", 9, "UINT32", "optional", "5", None),
        ("shutdown_timeout_secs", 10, "UINT32", "optional", "600", None),
        ("max_pending_steps", 11, "UINT32", "optional", "32", None),
        ("poll_interval_secs", 12, "UINT32", "optional", "1", None),
        ("feature_view_ttl_secs", 13, "UINT32", "optional", "1296000", None),
        ("feature_view_shard_count", 14, "UINT32", "optional", "20", None),
        ("feature_view_replication_count", 15, "UINT32", "optional", "1", None),
        ("retain_local_dump", 17, "BOOL", "optional", "false", None),
        ("upload_format", 18, "STRING", "optional", "ARROW", None),
    ],
    ("train.proto", "DeltaEmbeddingDumpConfig"): [
        ("dump_interval_steps", 1, "UINT32", "optional", "1000", None),
        ("output_dir", 2, "STRING", "optional", None, None),
        ("file_prefix", 3, "STRING", "optional", "delta_embedding", None),
        ("feature_store_config", 4, "MESSAGE:FeatureStoreConfig", "optional", None, None),
        ("dump_interval_minutes", 5, "UINT32", "optional", None, None),
        (
            "quant_type",
            6,
            "ENUM:DeltaEmbeddingQuantType",
            "optional",
            "DELTA_EMBEDDING_QUANT_NONE",
            None,
        ),
    ],
    ("train.proto", "TrainConfig"): [
        ("sparse_optimizer", 1, "MESSAGE:SparseOptimizer", "required", None, None),
        ("dense_optimizer", 2, "MESSAGE:DenseOptimizer", "required", None, None),
        ("num_steps", 3, "UINT32", "optional", None, None),
        ("num_epochs", 4, "UINT32", "optional", None, None),
        ("save_checkpoints_steps", 5, "UINT32", "optional", "1000", None),
        ("fine_tune_checkpoint", 6, "STRING", "optional", None, None),
        ("fine_tune_ckpt_param_map", 7, "STRING", "optional", None, None),
        ("log_step_count_steps", 8, "UINT32", "optional", "100", None),
        ("is_profiling", 9, "BOOL", "optional", "false", None),
        ("use_tensorboard", 10, "BOOL", "optional", "true", None),
        ("save_checkpoints_epochs", 11, "UINT32", "optional", None, None),
        ("tensorboard_summaries", 12, "STRING", "repeated", None, None),
        ("cudnn_allow_tf32", 13, "BOOL", "optional", "true", None),
        ("cuda_matmul_allow_tf32", 14, "BOOL", "optional", "false", None),
        (
            "global_embedding_constraints",
            15,
            "MESSAGE:ParameterConstraints",
            "optional",
            None,
            None,
        ),
        ("mixed_precision", 16, "STRING", "optional", None, None),
        ("grad_scaler", 17, "MESSAGE:GradScaler", "optional", None, None),
        ("gradient_accumulation_steps", 18, "UINT32", "optional", None, None),
        ("grad_clipping", 19, "MESSAGE:GradClipping", "optional", None, None),
        ("keep_checkpoint_max", 20, "UINT32", "optional", "0", None),
        ("save_checkpoints_timestamp_interval", 21, "UINT32", "optional", "0", None),
        ("save_checkpoints_timestamps", 22, "UINT64", "repeated", None, None),
        ("save_checkpoints_timestamp_quorum", 23, "FLOAT", "optional", "0.5", None),
        (
            "delta_embedding_dump_config",
            24,
            "MESSAGE:DeltaEmbeddingDumpConfig",
            "optional",
            None,
            None,
        ),
    ],
    ("loss.proto", "LossConfig"): [
        ("binary_cross_entropy", 1, "MESSAGE:BinaryCrossEntropy", "optional", None, "loss"),
        ("softmax_cross_entropy", 2, "MESSAGE:SoftmaxCrossEntropy", "optional", None, "loss"),
        ("l2_loss", 3, "MESSAGE:L2Loss", "optional", None, "loss"),
        ("jrc_loss", 4, "MESSAGE:JRCLoss", "optional", None, "loss"),
        ("binary_focal_loss", 5, "MESSAGE:BinaryFocalLoss", "optional", None, "loss"),
        ("recon_loss", 6, "MESSAGE:SidReconLoss", "optional", None, "sid_loss"),
        ("commitment_loss", 7, "MESSAGE:SidCommitmentLoss", "optional", None, "sid_loss"),
        ("contrastive_loss", 8, "MESSAGE:SidContrastiveLoss", "optional", None, "sid_loss"),
    ],
    ("loss.proto", "SidReconLoss"): [
        ("recon_type", 1, "STRING", "optional", "l2", None),
    ],
    ("loss.proto", "SidCommitmentLoss"): [
        ("latent_weight", 1, "FLOAT", "repeated", None, None),
        ("commitment_type", 2, "STRING", "optional", "l2", None),
    ],
    ("loss.proto", "SidContrastiveLoss"): [],
    ("loss.proto", "BinaryCrossEntropy"): [
        ("label_smoothing", 1, "FLOAT", "optional", "0", None),
    ],
    ("loss.proto", "SoftmaxCrossEntropy"): [
        ("label_smoothing", 1, "FLOAT", "optional", "0", None),
    ],
    ("loss.proto", "L2Loss"): [],
    ("loss.proto", "JRCLoss"): [
        ("session_name", 1, "STRING", "required", None, None),
        ("alpha", 2, "FLOAT", "optional", "0.5", None),
    ],
    ("loss.proto", "BinaryFocalLoss"): [
        ("gamma", 1, "FLOAT", "optional", "2", None),
        ("alpha", 2, "FLOAT", "optional", "0.5", None),
    ],
    ("metric.proto", "AUC"): [
        ("thresholds", 1, "UINT32", "optional", "200", None),
    ],
    ("metric.proto", "MulticlassAUC"): [
        ("thresholds", 1, "UINT32", "optional", "200", None),
        ("average", 2, "STRING", "optional", "macro", None),
    ],
    ("metric.proto", "RecallAtK"): [
        ("top_k", 1, "UINT32", "optional", "5", None),
    ],
    ("metric.proto", "MeanAbsoluteError"): [],
    ("metric.proto", "MeanSquaredError"): [],
    ("metric.proto", "Accuracy"): [
        ("threshold", 1, "FLOAT", "optional", "0.5", None),
        ("top_k", 2, "UINT32", "optional", "1", None),
    ],
    ("metric.proto", "GroupedAUC"): [
        ("grouping_key", 1, "STRING", "required", None, None),
    ],
    ("metric.proto", "XAUC"): [
        ("sample_ratio", 1, "FLOAT", "optional", "0.001", None),
        ("max_pairs", 2, "UINT64", "optional", None, None),
        ("in_batch", 3, "BOOL", "optional", "false", None),
    ],
    ("metric.proto", "GroupedXAUC"): [
        ("grouping_key", 1, "STRING", "required", None, None),
        ("max_pairs_per_group", 2, "UINT64", "optional", "100", None),
    ],
    ("metric.proto", "NormalizedEntropy"): [
        ("eta", 1, "FLOAT", "optional", "1e-12", None),
    ],
    ("metric.proto", "MetricConfig"): [
        ("auc", 1, "MESSAGE:AUC", "optional", None, "metric"),
        ("multiclass_auc", 2, "MESSAGE:MulticlassAUC", "optional", None, "metric"),
        ("recall_at_k", 3, "MESSAGE:RecallAtK", "optional", None, "metric"),
        ("mean_absolute_error", 4, "MESSAGE:MeanAbsoluteError", "optional", None, "metric"),
        ("mean_squared_error", 5, "MESSAGE:MeanSquaredError", "optional", None, "metric"),
        ("accuracy", 6, "MESSAGE:Accuracy", "optional", None, "metric"),
        ("grouped_auc", 7, "MESSAGE:GroupedAUC", "optional", None, "metric"),
        ("xauc", 8, "MESSAGE:XAUC", "optional", None, "metric"),
        ("grouped_xauc", 9, "MESSAGE:GroupedXAUC", "optional", None, "metric"),
        ("normalized_entropy", 10, "MESSAGE:NormalizedEntropy", "optional", None, "metric"),
    ],
    ("metric.proto", "TrainMetricConfig"): [
        ("auc", 1, "MESSAGE:AUC", "optional", None, "metric"),
        ("recall_at_k", 3, "MESSAGE:RecallAtK", "optional", None, "metric"),
        ("mean_absolute_error", 4, "MESSAGE:MeanAbsoluteError", "optional", None, "metric"),
        ("mean_squared_error", 5, "MESSAGE:MeanSquaredError", "optional", None, "metric"),
        ("accuracy", 6, "MESSAGE:Accuracy", "optional", None, "metric"),
        ("xauc", 8, "MESSAGE:XAUC", "optional", None, "metric"),
        ("decay_rate", 20, "FLOAT", "optional", "0.9", None),
        ("decay_step", 21, "UINT32", "optional", "100", None),
    ],
}

TZREC_ENUMS: dict[tuple[str, str], list[tuple[str, int]]] = {
    ("optimizer.proto", "WeightDecayMode"): [("NONE", 0), ("L2", 1), ("DECOUPLE", 2)],
    ("train.proto", "DeltaEmbeddingQuantType"): [
        ("DELTA_EMBEDDING_QUANT_NONE", 0),
        ("DELTA_EMBEDDING_QUANT_INT8", 1),
    ],
}

# tzrec's reserved numbers and names (they must stay unused in rankboard too).
TZREC_RESERVED: dict[str, tuple[list[int], list[str]]] = {
    "FeatureStoreConfig": ([4, 16], ["feature_entity_name", "allow_custom_endpoint"]),
}

# Documented, deliberate differences: (message, field) -> what rankboard has instead.
DEVIATIONS: dict[tuple[str, str], str] = {
    # a model may have no embedding tables (or no dense parameters)
    ("TrainConfig", "sparse_optimizer"): "label optional",
    ("TrainConfig", "dense_optimizer"): "label optional",
    # tzrec treats 0 and 1 alike (no accumulation); rankboard states 1
    ("TrainConfig", "gradient_accumulation_steps"): "default 1",
    # embedding sharding constraints (tzrec's feature.proto ParameterConstraints):
    # not implemented, so field 15 is reserved and a config setting it is refused
    ("TrainConfig", "global_embedding_constraints"): "absent (reserved 15)",
}

_TYPES = {
    getattr(FieldDescriptor, n): n.removeprefix("TYPE_")
    for n in dir(FieldDescriptor)
    if n.startswith("TYPE_")
}


def _type(field: FieldDescriptor) -> str:
    name = _TYPES[field.type]
    if field.message_type is not None:
        return f"{name}:{field.message_type.name}"
    if field.enum_type is not None:
        return f"{name}:{field.enum_type.name}"
    return name


def _label(field: FieldDescriptor) -> str:
    if field.is_repeated:
        return "repeated"
    return "required" if field.is_required else "optional"


def _default_matches(field: FieldDescriptor, text: object) -> bool:
    """Whether ``field``'s default is protoc's default text ``text`` (None: no default)."""
    if text is None:
        return not field.has_default_value
    if not field.has_default_value:
        return False
    value = field.default_value
    if field.type == FieldDescriptor.TYPE_ENUM:
        return field.enum_type.values_by_number[value].name == text
    if field.type == FieldDescriptor.TYPE_BOOL:
        return value == (text == "true")
    if field.type in (FieldDescriptor.TYPE_FLOAT, FieldDescriptor.TYPE_DOUBLE):
        # float32 fields: compare at float32 precision
        return math.isclose(value, float(text), rel_tol=1e-7, abs_tol=0.0) or value == float(text)
    if field.type == FieldDescriptor.TYPE_STRING:
        return value == text
    return value == int(text)


def _descriptor(proto_file: str, name: str) -> Descriptor:
    module = MODULES[proto_file]
    assert name in module.DESCRIPTOR.message_types_by_name, f"{proto_file}: message {name} missing"
    return module.DESCRIPTOR.message_types_by_name[name]


@pytest.mark.parametrize("key", list(TZREC_MESSAGES), ids=lambda k: k[1])
def test_every_tzrec_field_is_kept(key: tuple[str, str]) -> None:
    proto_file, name = key
    desc = _descriptor(proto_file, name)
    for fname, number, ftype, label, default, oneof in TZREC_MESSAGES[key]:
        deviation = DEVIATIONS.get((name, fname), "")
        if deviation.startswith("absent"):
            assert fname not in desc.fields_by_name
            continue
        assert fname in desc.fields_by_name, f"{name}.{fname} is missing"
        field = desc.fields_by_name[fname]
        where = f"{name}.{fname}"
        assert field.number == number, f"{where} number {field.number} != tzrec's {number}"
        assert _type(field) == ftype, f"{where} type {_type(field)} != tzrec's {ftype}"
        got_oneof = field.containing_oneof.name if field.containing_oneof else None
        assert got_oneof == oneof, f"{where} oneof {got_oneof} != tzrec's {oneof}"
        if not deviation.startswith("label"):
            assert _label(field) == label, f"{where} label {_label(field)} != tzrec's {label}"
        if not deviation.startswith("default"):
            assert _default_matches(field, default), f"{where} default != tzrec's {default!r}"


@pytest.mark.parametrize("key", list(TZREC_ENUMS), ids=lambda k: k[1])
def test_every_tzrec_enum_is_kept(key: tuple[str, str]) -> None:
    proto_file, name = key
    enum = MODULES[proto_file].DESCRIPTOR.enum_types_by_name[name]
    assert [(v.name, v.number) for v in enum.values] == TZREC_ENUMS[key]


def test_deviations_are_what_they_say() -> None:
    fields = train_pb2.TrainConfig.DESCRIPTOR.fields_by_name
    assert not fields["sparse_optimizer"].is_required
    assert not fields["dense_optimizer"].is_required
    assert train_pb2.TrainConfig().gradient_accumulation_steps == 1
    assert "global_embedding_constraints" not in fields
    with pytest.raises(ValueError, match="global_embedding_constraints"):
        parse_text("global_embedding_constraints {}", train_pb2.TrainConfig())


@pytest.mark.parametrize("key", list(TZREC_MESSAGES), ids=lambda k: k[1])
def test_rankboard_additions_do_not_reuse_tzrec_numbers(key: tuple[str, str]) -> None:
    proto_file, name = key
    desc = _descriptor(proto_file, name)
    taken = {number: fname for fname, number, *_ in TZREC_MESSAGES[key]}
    reserved_numbers, reserved_names = TZREC_RESERVED.get(name, ([], []))
    for field in desc.fields:
        assert field.number not in reserved_numbers, f"{name}.{field.name}: tzrec reserved"
        assert field.name not in reserved_names, f"{name}.{field.name}: tzrec reserved"
        if field.number in taken:
            assert field.name == taken[field.number], (name, field.number)
        elif proto_file != "metric.proto":
            # the trainer protos number their own additions from 1001
            assert field.number >= 1001, f"{name}.{field.name} = {field.number}: use >= 1001"


def test_tzrec_training_loop_fields_parse_to_their_values() -> None:
    cfg = parse_text(
        """
        sparse_optimizer { rowwise_adagrad_optimizer { lr: 0.01 } }
        dense_optimizer { adam_optimizer { lr: 0.001 } ema { decay: 0.99 } }
        mixed_precision: "BF16"
        grad_scaler { init_scale: 1024 growth_interval: 100 }
        gradient_accumulation_steps: 4
        grad_clipping { clipping_type: "norm" max_gradient: 5 }
        keep_checkpoint_max: 3
        """,
        train_pb2.TrainConfig(),
    )
    assert cfg.mixed_precision == "BF16"
    assert (cfg.grad_scaler.init_scale, cfg.grad_scaler.growth_interval) == (1024.0, 100)
    assert cfg.gradient_accumulation_steps == 4
    assert math.isclose(cfg.dense_optimizer.ema.decay, 0.99, rel_tol=1e-7)
    assert (cfg.grad_clipping.clipping_type, cfg.grad_clipping.norm_type) == ("norm", 2.0)
    assert cfg.keep_checkpoint_max == 3
    # the wire form carries tzrec's field number: key (18 << 3 | varint) = 144 = 0x90 0x01
    wire = train_pb2.TrainConfig(gradient_accumulation_steps=4).SerializeToString()
    assert wire == b"\x90\x01\x04"


def test_dense_ema_is_field_202_with_decay_0_999() -> None:
    """tzrec/optim/ema_test.py::test_config_default, plus the wire key of field 202."""
    dense = optimizer_pb2.DenseOptimizer()
    assert not dense.HasField("ema")
    dense.ema.SetInParent()
    assert dense.HasField("ema")
    assert math.isclose(dense.ema.decay, 0.999, rel_tol=1e-7)
    # key (202 << 3 | length-delimited) = 1618 = varint 0xd2 0x0c; EMAConfig{decay: 0.5}
    # is key (1 << 3 | fixed32) = 0x0d then 0.5f little-endian
    wire = optimizer_pb2.DenseOptimizer(ema=optimizer_pb2.EMAConfig(decay=0.5)).SerializeToString()
    assert wire == b"\xd2\x0c\x05\x0d\x00\x00\x00\x3f"


def test_sid_losses_are_a_second_oneof() -> None:
    cfg = parse_text(
        'commitment_loss { latent_weight: 1.0 latent_weight: 0.25 commitment_type: "cos" }',
        loss_pb2.LossConfig(),
    )
    assert cfg.WhichOneof("sid_loss") == "commitment_loss"
    assert cfg.WhichOneof("loss") is None
    assert list(cfg.commitment_loss.latent_weight) == [1.0, 0.25]
    assert loss_pb2.SidReconLoss().recon_type == "l2"
    assert loss_pb2.SidCommitmentLoss().commitment_type == "l2"
