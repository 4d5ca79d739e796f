"""The array index of serialized batches: the same bytes protobuf reads, and the decoder's
one-copy path gives the batch the protobuf path gives."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rankboard.protos import ingest_pb2, metric_pb2
from rankboard.protos.wire import encode_array
from rankboard.protos.wire_index import array_index
from rankboard.service.errors import InvalidBatch
from rankboard.service.state.batch import decode_batch

FIELDS = ("predictions", "labels", "weights", "sample_ids")


def random_batch(rng: np.random.Generator) -> ingest_pb2.Batch:
    """A batch with a random choice of optional columns, dtypes and declarations."""
    n = int(rng.integers(1, 300))
    width = int(rng.choice([0, 0, 3]))
    fdt = str(rng.choice(["<f4", "<f8", "<i4"]))
    msg = ingest_pb2.Batch(
        producer_id=f"p{rng.integers(1000)}",
        sequence=int(rng.integers(1, 1 << 40)),
        experiment="e",
        arm="a",
        task="ctr",
        phase=ingest_pb2.PHASE_EVAL if width == 0 else ingest_pb2.PHASE_TRAIN,
        step=int(rng.integers(0, 1 << 20)),
        predictions=encode_array(rng.random(n * max(width, 1)), fdt),
        labels=encode_array(rng.integers(0, 2, n), str(rng.choice(["<f4", "<i8"]))),
        num_classes=width,
    )
    for k in range(int(rng.integers(0, 3))):
        msg.grouping_keys.add(name=f"k{k}", keys=encode_array(rng.integers(-9, 9, n), "<i8"))
    if rng.random() < 0.5:
        msg.weights.CopyFrom(encode_array(rng.random(n), fdt))
    if rng.random() < 0.5:
        msg.sample_ids.CopyFrom(encode_array(rng.integers(0, 1 << 62, n), "<i8"))
    if rng.random() < 0.5:
        msg.metrics.add().auc.SetInParent()
    return msg


def same_batch(a, b) -> None:  # type: ignore[no-untyped-def]
    for name in ("predictions", "labels", "weights", "sample_ids"):
        x, y = getattr(a, name), getattr(b, name)
        assert (x is None) == (y is None), name
        if x is not None:
            assert x.dtype == y.dtype and torch.equal(x, y), name
    assert a.grouping_keys.keys() == b.grouping_keys.keys()
    for name, keys in a.grouping_keys.items():
        assert torch.equal(keys, b.grouping_keys[name])
    assert (a.key, a.step, a.sequence, a.metrics) == (b.key, b.step, b.sequence, b.metrics)


def test_spans_hold_the_bytes_protobuf_reads() -> None:
    rng = np.random.default_rng(7)
    for _ in range(200):
        msg = random_batch(rng)
        raw = msg.SerializeToString()
        index = array_index(raw)
        assert index is not None
        for name in FIELDS:
            if msg.HasField(name):
                arr, span = getattr(msg, name), index.arrays[name]
                assert span.dtype == arr.dtype
                assert raw[span.offset : span.offset + span.nbytes] == arr.data
            else:
                assert name not in index.arrays
        assert [name for name, _ in index.keys] == [c.name for c in msg.grouping_keys]
        for (_, span), col in zip(index.keys, msg.grouping_keys, strict=True):
            assert raw[span.offset : span.offset + span.nbytes] == col.keys.data


def test_one_copy_decode_equals_the_protobuf_decode() -> None:
    rng = np.random.default_rng(11)
    for _ in range(200):
        msg = random_batch(rng)
        raw = msg.SerializeToString()
        same_batch(decode_batch(msg, raw=raw), decode_batch(msg))


def test_columns_are_writable_copies_not_views_of_the_wire_bytes() -> None:
    msg = random_batch(np.random.default_rng(3))
    raw = msg.SerializeToString()
    before = bytes(raw)
    batch = decode_batch(msg, raw=raw)
    for t in (batch.predictions, batch.labels):
        assert t.numpy().flags.writeable and t.numpy().flags.aligned
        t.add_(1)  # the log keeps the wire bytes: a column is the service's own copy
    assert raw == before


def test_merged_fields_fall_back_to_protobuf() -> None:
    """A singular field written twice is merged by protobuf (the last data wins): the
    index declines, and the decoder reads what protobuf reads."""
    first = ingest_pb2.Batch(
        producer_id="p",
        experiment="e",
        arm="a",
        task="t",
        phase=ingest_pb2.PHASE_EVAL,
        predictions=encode_array(np.array([0.1, 0.2], np.float32)),
        labels=encode_array(np.array([0, 1], np.float32)),
    )
    second = ingest_pb2.Batch(predictions=encode_array(np.array([0.7, 0.8], np.float32)))
    raw = first.SerializeToString() + second.SerializeToString()
    msg = ingest_pb2.Batch.FromString(raw)
    assert array_index(raw) is None
    batch = decode_batch(msg, raw=raw)
    assert batch.predictions.tolist() == pytest.approx([0.7, 0.8])


def test_unknown_fields_are_skipped_and_bad_framing_declines() -> None:
    msg = ingest_pb2.Batch(
        producer_id="p",
        predictions=encode_array(np.array([0.5], np.float32)),
        labels=encode_array(np.array([1], np.float32)),
    )
    raw = msg.SerializeToString()
    # field 99 as a varint, a fixed64 and a length-delimited value (a newer producer)
    extra = bytes([0x98, 0x06, 0x05, 0x99, 0x06]) + bytes(8) + bytes([0x9A, 0x06, 0x02, 1, 2])
    index = array_index(raw + extra)
    assert (
        index is not None and index.arrays["predictions"] == array_index(raw).arrays["predictions"]
    )  # type: ignore[union-attr]
    assert array_index(raw[:-3]) is None  # cut inside an array
    assert array_index(raw + bytes([0x9A])) is None  # a tag with no value


def test_one_copy_decode_refuses_what_the_protobuf_decode_refuses() -> None:
    base = dict(producer_id="p", experiment="e", arm="a", task="t", phase=ingest_pb2.PHASE_EVAL)
    bad = [
        ingest_pb2.Batch(
            predictions=ingest_pb2.Array(dtype=ingest_pb2.DTYPE_FLOAT32, data=b"abc"),
            labels=encode_array(np.array([1], np.float32)),
            **base,
        ),
        ingest_pb2.Batch(
            predictions=encode_array(np.array([np.nan], np.float32)),
            labels=encode_array(np.array([1], np.float32)),
            **base,
        ),
        ingest_pb2.Batch(
            predictions=encode_array(np.array([0.5])),
            labels=encode_array(np.array([1e39])),
            **base,
        ),
        ingest_pb2.Batch(
            predictions=encode_array(np.array([0.5], np.float32)),
            labels=encode_array(np.array([1], np.float32)),
            weights=encode_array(np.array([-1.0], np.float32)),
            **base,
        ),
        ingest_pb2.Batch(
            predictions=ingest_pb2.Array(data=bytes(4)),
            labels=encode_array(np.array([1], np.float32)),
            **base,
        ),
    ]
    for msg in bad:
        with pytest.raises(InvalidBatch) as slow:
            decode_batch(msg)
        with pytest.raises(InvalidBatch) as fast:
            decode_batch(msg, raw=msg.SerializeToString())
        assert str(fast.value) == str(slow.value)


def test_metric_declarations_survive_the_one_copy_path() -> None:
    msg = random_batch(np.random.default_rng(5))
    msg.metrics.add().grouped_auc.grouping_key = "k0"
    batch = decode_batch(msg, raw=msg.SerializeToString())
    assert isinstance(batch.metrics[-1], metric_pb2.MetricConfig)
    assert batch.metrics[-1].grouped_auc.grouping_key == "k0"
