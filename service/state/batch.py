"""Decode and validate ingestion batches into tensors, without per-sample Python.

The arrays of a :class:`rankboard.v1.Batch` are raw little-endian buffers; they
are decoded with :func:`numpy.frombuffer` (zero copy) and wrapped as tensors.

Example::

    >>> import numpy as np
    >>> from rankboard.protos import ingest_pb2
    >>> msg = ingest_pb2.Batch(producer_id="p", sequence=1, experiment="e", arm="a",
    ...     task="ctr", phase=ingest_pb2.PHASE_EVAL,
    ...     predictions=encode_array(np.array([0.2, 0.9], np.float32)),
    ...     labels=encode_array(np.array([0, 1], np.float32)))
    >>> b = decode_batch(msg)
    >>> b.key, b.num_samples, b.labels.tolist()
    (RunKey(experiment='e', arm='a', task='ctr', phase='eval'), 2, [0.0, 1.0])
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

import numpy as np
import torch

from rankboard.protos import ingest_pb2, metric_pb2, wire
from rankboard.protos.wire_index import ArraySpan, array_index
from rankboard.service.errors import InvalidBatch
from rankboard.service.metrics.functional._validation import remember_range

# the wire format is written once, in the codec; these names stay importable from here
_DTYPES = wire.DTYPES
PHASES = wire.PHASE_NAMES
encode_array = wire.encode_array
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}")  # used with fullmatch
_FLOAT32_MAX = float(np.finfo(np.float32).max)
MAX_SAMPLES_PER_BATCH = 1 << 22
MAX_SEGMENTS_PER_BATCH = 1024  # each segment is one metric update


@dataclass(frozen=True, order=True)
class RunKey:
    """Identity of a run: one metric state per (experiment, arm, task, phase)."""

    experiment: str
    arm: str
    task: str
    phase: str


@dataclass
class Batch:
    """A decoded, structurally valid batch (metric-level checks come later)."""

    producer_id: str
    sequence: int
    key: RunKey
    step: int
    predictions: torch.Tensor
    labels: torch.Tensor
    weights: torch.Tensor | None = None
    grouping_keys: dict[str, torch.Tensor] = field(default_factory=dict)
    metrics: list[metric_pb2.MetricConfig] = field(default_factory=list)
    train_metrics: list[metric_pb2.TrainMetricConfig] = field(default_factory=list)
    # (step, samples) of each run of consecutive samples of one step, in order;
    # empty means one segment of ``step``
    step_segments: list[tuple[int, int]] = field(default_factory=list)
    # optional int64 identity of each sample (eval sets scored by several arms: pairing)
    sample_ids: torch.Tensor | None = None

    @property
    def num_samples(self) -> int:
        """Number of samples (rows) in the batch."""
        return int(self.labels.shape[0])

    def rows(self, lo: int, hi: int, step: int | None = None) -> Batch:
        """Rows ``lo:hi`` as a batch of one step (views of the tensors, no copies).

        >>> import torch
        >>> b = Batch("p", 1, RunKey("e", "a", "t", "eval"), 3, torch.arange(4.0), torch.zeros(4))
        >>> b.rows(1, 3).predictions.tolist()
        [1.0, 2.0]
        """
        return Batch(
            self.producer_id,
            self.sequence,
            self.key,
            self.step if step is None else step,
            self.predictions[lo:hi],
            self.labels[lo:hi],
            None if self.weights is None else self.weights[lo:hi],
            {name: k[lo:hi] for name, k in self.grouping_keys.items()},
            self.metrics,
            self.train_metrics,
            sample_ids=None if self.sample_ids is None else self.sample_ids[lo:hi],
        )

    def split(self) -> list[Batch]:
        """One batch per segment (views of this batch's tensors, no copies).

        >>> import torch
        >>> b = Batch("p", 1, RunKey("e", "a", "t", "train"), 0, torch.arange(3.0),
        ...           torch.zeros(3), step_segments=[(4, 1), (5, 2)])
        >>> [(s.step, s.predictions.tolist()) for s in b.split()]
        [(4, [0.0]), (5, [1.0, 2.0])]
        """
        if not self.step_segments:
            return [self]
        out, lo = [], 0
        for step, count in self.step_segments:
            out.append(self.rows(lo, lo + count, step))
            lo += count
        return out


def decode_array(arr: ingest_pb2.Array, what: str) -> np.ndarray:
    """Decode ``arr`` into a writable array of its own (:func:`rankboard.protos.wire.decode_array`
    then a copy); ``what`` names the field in errors, raised as :class:`InvalidBatch`."""
    try:
        values = wire.decode_array(arr, what)
    except wire.WireError as err:
        raise InvalidBatch(str(err)) from None
    # a writable copy: torch refuses to share read-only buffers without a warning
    return values.copy()


class _ArrayReader:
    """Reads a batch's arrays with one copy from the wire bytes where it has them.

    With ``raw`` (the message's wire form) each array is copied once, straight from
    its place in ``raw`` (:func:`rankboard.protos.wire_index.array_index`), into an
    aligned, writable array of the service's dtype (an int column becomes float32 in
    the same pass). Without, or for a message protobuf would merge, through protobuf
    (``msg.field.data`` is a copy, then one more).
    """

    def __init__(self, msg: ingest_pb2.Batch, raw: bytes | None) -> None:
        self._raw = raw
        self._index = array_index(raw) if raw is not None else None
        if self._index is not None and len(self._index.keys) != len(msg.grouping_keys):
            self._index = None  # not the message protobuf read: take its reading

    def read(
        self, arr: ingest_pb2.Array, what: str, field: str | int, float_ints: bool = False
    ) -> np.ndarray:
        """Array ``field`` (a Batch field name, or the position of a key column)."""
        span = self._span(field)
        if span is None or self._raw is None:
            values = decode_array(arr, what)
            return values.astype(np.float32) if float_ints and values.dtype.kind == "i" else values
        dtype = _DTYPES.get(span.dtype)  # type: ignore[call-overload]
        if dtype is None:
            raise InvalidBatch(
                f"{what}: dtype must be set to one of FLOAT32, FLOAT64, INT32, INT64"
            )
        if span.nbytes % dtype.itemsize:
            raise InvalidBatch(
                f"{what}: {span.nbytes} bytes is not a multiple of {dtype.itemsize} ({dtype.name})"
            )
        view = np.frombuffer(self._raw, dtype, span.nbytes // dtype.itemsize, span.offset)
        out = np.float32 if float_ints and dtype.kind == "i" else dtype.newbyteorder("=")
        return view.astype(out)  # the one copy: aligned, writable, native order

    def _span(self, field: str | int) -> ArraySpan | None:
        if self._index is None:
            return None
        if isinstance(field, int):
            return self._index.keys[field][1]
        return self._index.arrays.get(field)


def _check_name(value: str, what: str) -> str:
    if not _NAME.fullmatch(value):
        raise InvalidBatch(
            f"{what} {value!r} must be 1-128 characters of letters, digits, '_', '.', '-'"
            " and start with a letter or digit"
        )
    return value


def decode_batch(
    msg: ingest_pb2.Batch, max_samples: int = MAX_SAMPLES_PER_BATCH, raw: bytes | None = None
) -> Batch:
    """Decode ``msg`` into tensors and check its structure.

    ``raw``, ``msg``'s wire form when the caller has it, saves a copy of every column
    (see :class:`_ArrayReader`). Raises :class:`InvalidBatch` for missing identity
    fields, unknown phases, bad buffers, mismatched lengths, empty or oversized batches,
    and NaN or infinite predictions, labels or weights.
    """
    if not msg.producer_id:
        raise InvalidBatch("producer_id is required")
    if len(msg.producer_id) > 256:
        raise InvalidBatch("producer_id is longer than 256 characters")
    phase = PHASES.get(msg.phase)
    if phase is None:
        raise InvalidBatch("phase must be PHASE_TRAIN or PHASE_EVAL")
    key = RunKey(
        _check_name(msg.experiment, "experiment"),
        _check_name(msg.arm, "arm"),
        _check_name(msg.task, "task"),
        phase,
    )
    if msg.step < 0:
        raise InvalidBatch(f"step must be >= 0, got {msg.step}")
    if not msg.HasField("predictions") or not msg.HasField("labels"):
        raise InvalidBatch("predictions and labels are required")
    reader = _ArrayReader(msg, raw)
    labels = reader.read(msg.labels, "labels", "labels")
    n = labels.shape[0]
    if n == 0:
        raise InvalidBatch("empty batch: labels has no values")
    if n > max_samples:
        raise InvalidBatch(f"batch of {n} samples is over the limit of {max_samples} per batch")
    preds = reader.read(msg.predictions, "predictions", "predictions", float_ints=True)
    width = max(msg.num_classes, 1)
    if preds.shape[0] != n * width:
        raise InvalidBatch(
            f"length mismatch: {n} labels but {preds.shape[0]} predictions"
            + (f" (expected {n} x {width} classes)" if width > 1 else "")
        )
    pred_range = _check_float32_range(preds, "predictions")
    pred_t = torch.from_numpy(preds)
    if width > 1:
        pred_t = pred_t.reshape(n, width)
    remember_range(pred_t, *pred_range)  # the metrics' validation takes it from here
    label_t = torch.from_numpy(labels)
    if labels.dtype.kind == "f":
        remember_range(label_t, *_check_float32_range(labels, "labels"))
    weights = None
    if msg.HasField("weights"):
        w = reader.read(msg.weights, "weights", "weights", float_ints=True)
        if w.shape[0] != n:
            raise InvalidBatch(f"length mismatch: {n} labels but {w.shape[0]} weights")
        w_range = _check_float32_range(w, "weights")
        if w_range[0] < 0:
            raise InvalidBatch("weights must be finite and >= 0")
        weights = torch.from_numpy(w)
        remember_range(weights, *w_range)
    keys: dict[str, torch.Tensor] = {}
    for i, col in enumerate(msg.grouping_keys):
        name = _check_name(col.name, "grouping key name")
        if name in keys:
            raise InvalidBatch(f"grouping key {name!r} given twice")
        k = reader.read(col.keys, f"grouping key {name!r}", i)
        if k.dtype.kind != "i":
            raise InvalidBatch(f"grouping key {name!r} must be INT64 or INT32")
        if k.shape[0] != n:
            raise InvalidBatch(f"length mismatch: {n} labels but {k.shape[0]} keys in {name!r}")
        keys[name] = torch.from_numpy(k.astype(np.int64, copy=False))
    sample_ids = None
    if msg.HasField("sample_ids"):
        ids = reader.read(msg.sample_ids, "sample_ids", "sample_ids")
        if ids.dtype.kind != "i":
            raise InvalidBatch("sample_ids must be INT64 or INT32")
        if ids.shape[0] != n:
            raise InvalidBatch(f"length mismatch: {n} labels but {ids.shape[0]} sample_ids")
        sample_ids = torch.from_numpy(ids.astype(np.int64, copy=False))
    segments = [(int(s.step), int(s.samples)) for s in msg.segments]
    if segments:
        if len(segments) > MAX_SEGMENTS_PER_BATCH:
            raise InvalidBatch(
                f"{len(segments)} segments is over the limit of {MAX_SEGMENTS_PER_BATCH} per batch"
            )
        if any(step < 0 for step, _ in segments):
            raise InvalidBatch("segments: every step must be >= 0")
        if any(count == 0 for _, count in segments):
            raise InvalidBatch("segments: every segment must hold at least one sample")
        held = sum(count for _, count in segments)
        if held != n:
            raise InvalidBatch(f"length mismatch: {n} labels but the segments hold {held} samples")
    return Batch(
        producer_id=msg.producer_id,
        sequence=msg.sequence,
        key=key,
        step=segments[0][0] if segments else msg.step,
        predictions=pred_t,
        labels=label_t,
        weights=weights,
        grouping_keys=keys,
        metrics=list(msg.metrics),
        train_metrics=list(msg.train_metrics),
        step_segments=segments if len(segments) > 1 else [],
        sample_ids=sample_ids,
    )


def _check_float32_range(values: np.ndarray, what: str) -> tuple[float, float]:
    """Refuse NaN, infinities and float64 values that become infinite as float32 state;
    return ``(min, max)``. One min and one max pass (vectorized, no temporaries):
    both propagate NaN, and an infinity is its own min or max.

    >>> _check_float32_range(np.array([1e39]), "labels")
    ... # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    rankboard.service.errors.InvalidBatch: labels contain values beyond float32's range ...
    >>> _check_float32_range(np.array([0.5, np.nan], np.float32), "weights")
    Traceback (most recent call last):
    ...
    rankboard.service.errors.InvalidBatch: weights contain NaN or infinite values
    """
    lo, hi = float(values.min()), float(values.max())
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise InvalidBatch(f"{what} contain NaN or infinite values")
    if values.dtype == np.float64 and (lo < -_FLOAT32_MAX or hi > _FLOAT32_MAX):
        raise InvalidBatch(
            f"{what} contain values beyond float32's range (|x| > {_FLOAT32_MAX!r}):"
            " metric state is float32"
        )
    return lo, hi
