"""The wire codec (rankboard.protos.wire) and who may import what.

Values are checked against NumPy's own view of the bytes and against the
service's decoder, never against what the codec printed.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from rankboard.protos import ingest_pb2, metric_pb2, wire
from rankboard.service.errors import InvalidBatch
from rankboard.service.state import batch as state_batch

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("dtype", ["<f4", "<f8", "<i4", "<i8", ">f4", ">i8"])
def test_array_round_trip_is_little_endian_and_zero_copy(dtype: str) -> None:
    values = (np.arange(7) * 3 - 5).astype(dtype)
    arr = wire.encode_array(values)
    little = np.dtype(dtype).newbyteorder("<")
    assert arr.data == values.astype(little).tobytes()  # little-endian bytes on the wire
    assert wire.DTYPES[arr.dtype] == little
    out = wire.decode_array(arr, "x")
    np.testing.assert_array_equal(out, values)
    assert not out.flags.writeable and not out.flags.owndata  # a view of the message's buffer
    writable = state_batch.decode_array(arr, "x")  # the service copies once, for torch
    assert writable.flags.writeable
    np.testing.assert_array_equal(writable, values)


def test_encode_casts_and_takes_tensors() -> None:
    arr = wire.encode_array(torch.tensor([[1, 2], [3, 4]]), "<f4")
    assert arr.dtype == ingest_pb2.DTYPE_FLOAT32
    assert arr.data == np.array([1, 2, 3, 4], "<f4").tobytes()  # row-major flattening
    with pytest.raises(ValueError, match="unsupported dtype"):
        wire.encode_array(np.zeros(2, np.float16))


def test_bad_arrays_are_refused_naming_the_field() -> None:
    with pytest.raises(wire.WireError, match="labels: dtype must be set"):
        wire.decode_array(ingest_pb2.Array(data=b"\0" * 4), "labels")
    bad = ingest_pb2.Array(dtype=ingest_pb2.DTYPE_FLOAT64, data=b"\0" * 12)
    with pytest.raises(InvalidBatch, match="weights: 12 bytes is not a multiple of 8"):
        state_batch.decode_array(bad, "weights")


def test_phases() -> None:
    assert wire.PHASE_NAMES == {ingest_pb2.PHASE_TRAIN: "train", ingest_pb2.PHASE_EVAL: "eval"}
    for name in ("train", "eval"):
        assert wire.PHASE_NAMES[wire.phase_code(name)] == name
    with pytest.raises(ValueError, match="phase must be 'train' or 'eval'"):
        wire.phase_code("test")
    assert state_batch.PHASES is wire.PHASE_NAMES  # one table


@pytest.mark.parametrize(
    ("phase", "bare", "wrapped"),
    [
        (
            "eval",
            'auc { thresholds: 0 } grouped_auc { grouping_key: "u{" } window_size: 9',
            'metrics { auc { thresholds: 0 } } metrics { grouped_auc { grouping_key: "u{" }'
            " window_size: 9 }",
        ),
        (
            "train",
            "auc {} decay_step: 10 decay_rate: 0.5 mean_squared_error {}",
            "train_metrics { auc {} decay_step: 10 decay_rate: 0.5 }"
            " train_metrics { mean_squared_error {} }",
        ),
    ],
)
def test_bare_and_wrapped_declarations_parse_the_same(phase: str, bare: str, wrapped: str) -> None:
    got_bare = wire.parse_metrics(phase, bare)
    got_wrapped = wire.parse_metrics(phase, wrapped)
    assert [m.SerializeToString() for m in got_bare] == [m.SerializeToString() for m in got_wrapped]
    # built by hand from the descriptor, independently of the parser
    cls = metric_pb2.TrainMetricConfig if phase == "train" else metric_pb2.MetricConfig
    if phase == "eval":
        first = cls(auc=metric_pb2.AUC(thresholds=0))
        second = cls(grouped_auc=metric_pb2.GroupedAUC(grouping_key="u{"), window_size=9)
    else:
        first = cls(auc=metric_pb2.AUC(), decay_step=10, decay_rate=0.5)
        second = cls(mean_squared_error=metric_pb2.MeanSquaredError())
    assert got_bare == [first, second]
    assert wire.parse_metrics(phase, [first, second]) == [first, second]


def test_declaration_errors_point_into_the_text() -> None:
    text = 'auc {} gauc { grouping_key: "u" }'
    with pytest.raises(wire.DeclarationError) as info:
        wire.parse_metrics("eval", text, source="--metrics")
    assert f"unknown metric 'gauc' at character {text.index('gauc') + 1}" in str(info.value)
    assert "did you mean grouped_auc?" in str(info.value)
    with pytest.raises(ValueError, match="uses `train_metrics"):
        wire.parse_metrics("train", "metrics { auc {} }")
    with pytest.raises(TypeError, match="TrainMetricConfig"):
        wire.parse_metrics("train", [metric_pb2.MetricConfig()])


def test_every_scalar_field_of_the_configs_is_known() -> None:
    for cls in (metric_pb2.MetricConfig, metric_pb2.TrainMetricConfig):
        scalars = {f.name for f in cls.DESCRIPTOR.fields if f.message_type is None}
        assert scalars <= wire.SCALAR_FIELDS


def test_encode_batch_decodes_to_the_same_values() -> None:
    rng = np.random.default_rng(3)
    probs = rng.random((5, 3)).astype(np.float32)
    labels = np.array([0, 2, 1, 1, 0])
    users = np.array([7, 7, 8, 9, 9])
    ids = np.arange(100, 105)
    weights = rng.random(5)
    declared = wire.parse_metrics("eval", "multiclass_auc {} accuracy {}")
    msg = wire.encode_batch(
        producer_id="p",
        experiment="e",
        arm="a",
        task="t",
        phase="eval",
        step=4,
        predictions=probs,
        labels=labels,
        num_classes=3,
        weights=weights,
        grouping_keys={"user": users},
        sample_ids=ids,
        segments=[(4, 2), (6, 3)],
        metrics=declared,
        sequence=11,
    )
    got = state_batch.decode_batch(ingest_pb2.Batch.FromString(msg.SerializeToString()))
    assert (got.producer_id, got.sequence, got.key.phase, got.step) == ("p", 11, "eval", 4)
    np.testing.assert_array_equal(got.predictions.numpy(), probs)
    np.testing.assert_array_equal(got.labels.numpy(), labels.astype(np.float32))
    np.testing.assert_array_equal(got.weights.numpy(), weights.astype(np.float32))
    np.testing.assert_array_equal(got.grouping_keys["user"].numpy(), users)
    np.testing.assert_array_equal(got.sample_ids.numpy(), ids)
    assert got.step_segments == [(4, 2), (6, 3)]
    assert got.metrics == declared and not got.train_metrics


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_the_service_does_not_import_the_trainer_package() -> None:
    offenders = [
        str(p.relative_to(ROOT))
        for p in (ROOT / "service").rglob("*.py")
        if any(n.startswith("rankboard.trainer") for n in _imports(p))
    ]
    assert offenders == []
    for p in ROOT.joinpath("protos").glob("*.py"):
        if not p.name.endswith(("_pb2.py", "_pb2_grpc.py")):
            names = _imports(p)
            assert not any(n.startswith(("torch", "rankboard.trainer", "rankboard.service"))
                           for n in names), p.name  # fmt: skip


def test_send_and_the_sender_load_neither_torch_nor_the_trainer() -> None:
    code = (
        "import sys\n"
        "import rankboard.service.send as send, rankboard.protos.stream\n"
        "send.validate_metrics_text('auc {}', 'eval')\n"
        "print(sorted(m for m in ('torch', 'rankboard.trainer') if m in sys.modules))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert out.stdout.strip() == "[]", out.stderr
