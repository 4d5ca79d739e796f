"""The wire codec of ``rankboard.v1``: arrays, phases and metric declarations.

Every side that builds or reads :class:`rankboard.v1.Batch` messages uses this
module, so the wire format is written once: the trainer client
(:mod:`rankboard.trainer.client`), ``rankboard send`` (:mod:`rankboard.service.send`)
and the service's decoder (:mod:`rankboard.service.state.batch`).

* **Arrays** are raw little-endian buffers with a dtype code
  (:data:`DTYPES`): :func:`encode_array` writes one, :func:`decode_array`
  reads one back as a zero-copy NumPy view.
* **Batches**: :func:`encode_batch` builds one as producers send it.
* **Phases and metric declarations** (:func:`phase_code`, :func:`parse_metrics`, the one
  parser of declarations, ...) live in :mod:`rankboard.protos.declarations`; this module
  re-exports them, so ``wire`` is the one import of the codec.

The module needs NumPy and protobuf only (no torch), so a light producer can use it.

Example::

    >>> import numpy as np
    >>> arr = encode_array(np.array([0.25, 1.0], np.float32))
    >>> decode_array(arr, "labels").tolist()
    [0.25, 1.0]
    >>> [m.WhichOneof("metric") for m in parse_metrics("eval", 'auc {} accuracy {}')]
    ['auc', 'accuracy']
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from google.protobuf import message

from rankboard.protos import ingest_pb2
from rankboard.protos.declarations import (
    PHASE_NAMES,
    SCALAR_FIELDS,
    DeclarationError,
    MetricList,
    declaration_field,
    metric_blocks,
    metric_fields,
    parse_metrics,
    phase_code,
    validate_metrics_text,
)

__all__ = [
    "DTYPES",
    "PHASE_NAMES",
    "SCALAR_FIELDS",
    "DeclarationError",
    "MetricList",
    "WireError",
    "declaration_field",
    "decode_array",
    "encode_array",
    "encode_batch",
    "metric_blocks",
    "metric_fields",
    "parse_metrics",
    "phase_code",
    "validate_metrics_text",
]


class WireError(ValueError):
    """A wire value that does not decode (dtype unset, buffer of a wrong length)."""


# ---------------------------------------------------------------- arrays
DTYPES: dict[ingest_pb2.DType, np.dtype] = {
    ingest_pb2.DTYPE_FLOAT32: np.dtype("<f4"),
    ingest_pb2.DTYPE_FLOAT64: np.dtype("<f8"),
    ingest_pb2.DTYPE_INT32: np.dtype("<i4"),
    ingest_pb2.DTYPE_INT64: np.dtype("<i8"),
}
"""Wire dtype code -> the little-endian NumPy dtype of its buffer."""
_CODES = {v.str: k for k, v in DTYPES.items()}


def encode_array(values: Any, dtype: str | np.dtype | None = None) -> ingest_pb2.Array:
    """Encode a 1-D (or flattened) array as a little-endian :class:`Array`.

    ``values`` is a NumPy array, a CPU torch tensor or anything ``np.asarray``
    takes; ``dtype`` (e.g. ``"<f4"``) casts it first, else its own dtype is kept
    (it must be float32, float64, int32 or int64).

    >>> encode_array(np.arange(3, dtype=np.int64)).dtype == ingest_pb2.DTYPE_INT64
    True
    >>> encode_array(np.arange(3), "<f4").data == np.arange(3, dtype="<f4").tobytes()
    True
    """
    if hasattr(values, "detach"):  # a torch tensor (torch is not imported here)
        values = values.detach().cpu().numpy()
    arr = np.ascontiguousarray(values).reshape(-1)
    little = np.dtype(dtype).newbyteorder("<") if dtype is not None else arr.dtype.newbyteorder("<")
    code = _CODES.get(little.str)
    if code is None:
        raise ValueError(f"unsupported dtype {little}: use float32, float64, int32 or int64")
    return ingest_pb2.Array(dtype=code, data=arr.astype(little, copy=False).tobytes())


def decode_array(arr: ingest_pb2.Array, what: str) -> np.ndarray:
    """A read-only NumPy view of ``arr``'s buffer (zero copy); ``what`` names it in errors.

    >>> try:
    ...     decode_array(ingest_pb2.Array(dtype=ingest_pb2.DTYPE_INT64, data=b"abc"), "keys")
    ... except WireError as err:
    ...     print(err)
    keys: 3 bytes is not a multiple of 8 (int64)
    """
    dtype = DTYPES.get(arr.dtype)
    if dtype is None:
        raise WireError(f"{what}: dtype must be set to one of FLOAT32, FLOAT64, INT32, INT64")
    if len(arr.data) % dtype.itemsize:
        raise WireError(
            f"{what}: {len(arr.data)} bytes is not a multiple of {dtype.itemsize} ({dtype.name})"
        )
    return np.frombuffer(arr.data, dtype=dtype)


# ---------------------------------------------------------------- batches
def encode_batch(
    *,
    producer_id: str,
    experiment: str,
    arm: str,
    task: str,
    phase: str,
    step: int,
    predictions: Any,
    labels: Any,
    num_classes: int = 0,
    weights: Any = None,
    grouping_keys: Mapping[str, Any] | None = None,
    sample_ids: Any = None,
    segments: Sequence[tuple[int, int]] = (),
    metrics: Sequence[message.Message] = (),
    sequence: int = 0,
) -> ingest_pb2.Batch:
    """A :class:`Batch` as producers send it: float32 values, int64 keys and ids.

    ``predictions`` holds n values, or n x ``num_classes`` row-major; ``segments``
    are ``(step, samples)`` runs when the batch holds several steps (``step`` is
    then the first); ``metrics`` is the declaration of ``phase``.

    >>> b = encode_batch(producer_id="p", experiment="e", arm="a", task="ctr", phase="eval",
    ...     step=3, predictions=[0.5, 0.25], labels=[1, 0], grouping_keys={"user": [7, 7]})
    >>> decode_array(b.predictions, "p").tolist(), decode_array(b.grouping_keys[0].keys, "k")
    ([0.5, 0.25], array([7, 7]))
    """
    batch = ingest_pb2.Batch(
        producer_id=producer_id,
        sequence=sequence,
        experiment=experiment,
        arm=arm,
        task=task,
        phase=phase_code(phase),
        step=step,
        predictions=encode_array(predictions, "<f4"),
        labels=encode_array(labels, "<f4"),
        num_classes=num_classes,
    )
    for name, col in (grouping_keys or {}).items():
        batch.grouping_keys.add(name=name, keys=encode_array(col, "<i8"))
    if weights is not None:
        batch.weights.CopyFrom(encode_array(weights, "<f4"))
    if sample_ids is not None:
        batch.sample_ids.CopyFrom(encode_array(sample_ids, "<i8"))
    for seg_step, count in segments:
        batch.segments.add(step=seg_step, samples=count)
    if metrics:
        getattr(batch, declaration_field(phase)).extend(metrics)
    return batch
