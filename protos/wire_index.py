"""Where the array buffers of a serialized :class:`rankboard.v1.Batch` lie in its bytes.

The service logs a batch's wire bytes as they came and keeps its columns as tensors.
Reading a column through protobuf (``msg.predictions.data``) copies it into a new
immutable ``bytes``, which torch cannot share writable, hence a second copy. This
module walks the message's framing instead (a dozen tags: no per-sample work) and
returns, for each array, its dtype code and the offset and length of its buffer, so
the decoder copies the whole message once into a buffer it owns and views every
column in it: one copy from the wire.

Protobuf merges a singular message field that appears more than once; the index does
not reproduce that: for such a message (which no encoder of ours writes) it returns
``None`` and the caller decodes through protobuf.

Example::

    >>> import numpy as np
    >>> from rankboard.protos import ingest_pb2
    >>> from rankboard.protos.wire import encode_array
    >>> msg = ingest_pb2.Batch(producer_id="p", predictions=encode_array(np.ones(2, np.float32)),
    ...     labels=encode_array(np.zeros(2, np.float32)))
    >>> _ = msg.grouping_keys.add(name="user", keys=encode_array(np.arange(2)))
    >>> raw = msg.SerializeToString()
    >>> index = array_index(raw)
    >>> span = index.arrays["predictions"]
    >>> np.frombuffer(raw, "<f4", 2, span.offset).tolist(), [name for name, _ in index.keys]
    ([1.0, 1.0], ['user'])
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import NamedTuple

__all__ = ["ArraySpan", "BatchIndex", "array_index"]

# field numbers of rankboard.v1.Batch, KeyColumn and Array (protos/ingest.proto)
_BATCH_ARRAYS = {8: "predictions", 9: "labels", 11: "weights", 16: "sample_ids"}
_BATCH_KEYS = 10
_KEY_NAME, _KEY_ARRAY = 1, 2
_ARRAY_DTYPE, _ARRAY_DATA = 1, 2
_VARINT, _I64, _LEN, _I32 = 0, 1, 2, 5
Buffer = bytes | bytearray | memoryview


class ArraySpan(NamedTuple):
    """An array's dtype code (``rankboard.v1.DType``) and where its buffer lies."""

    dtype: int
    offset: int
    nbytes: int


@dataclass
class BatchIndex:
    """The arrays of one serialized batch: by field name, and the key columns in order."""

    arrays: dict[str, ArraySpan] = field(default_factory=dict)
    keys: list[tuple[str, ArraySpan]] = field(default_factory=list)


class _Unusual(Exception):
    """A framing the index does not follow (merged fields, bad bytes): use protobuf."""


def _varint(buf: Buffer, pos: int, end: int) -> tuple[int, int]:
    value = shift = 0
    while pos < end:
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7
        if shift > 63:
            break
    raise _Unusual


def _fields(buf: Buffer, pos: int, end: int) -> Iterator[tuple[int, int, int, int]]:
    """``(number, wire type, value or start, end)`` of each field in ``buf[pos:end]``."""
    while pos < end:
        tag, pos = _varint(buf, pos, end)
        number, kind = tag >> 3, tag & 7
        if kind == _VARINT:
            value, pos = _varint(buf, pos, end)
            yield number, kind, value, pos
        elif kind == _LEN:
            size, pos = _varint(buf, pos, end)
            if pos + size > end:
                raise _Unusual
            yield number, kind, pos, pos + size
            pos += size
        elif kind in (_I64, _I32):
            pos += 8 if kind == _I64 else 4
            yield number, kind, 0, pos
        else:  # groups: not in these messages
            raise _Unusual
    if pos != end:
        raise _Unusual


def _array(buf: Buffer, start: int, end: int) -> ArraySpan:
    dtype, data, seen = 0, (start, start), set()
    for number, kind, value, stop in _fields(buf, start, end):
        if number in seen:
            raise _Unusual
        seen.add(number)
        if number == _ARRAY_DTYPE and kind == _VARINT:
            dtype = value
        elif number == _ARRAY_DATA and kind == _LEN:
            data = (value, stop)
        else:
            raise _Unusual
    return ArraySpan(dtype, data[0], data[1] - data[0])


def _key_column(buf: Buffer, start: int, end: int) -> tuple[str, ArraySpan]:
    name, keys, seen = "", ArraySpan(0, start, 0), set()
    for number, kind, value, stop in _fields(buf, start, end):
        if number in seen or kind != _LEN:
            raise _Unusual
        seen.add(number)
        if number == _KEY_NAME:
            name = bytes(buf[value:stop]).decode("utf-8")
        elif number == _KEY_ARRAY:
            keys = _array(buf, value, stop)
        else:
            raise _Unusual
    return name, keys


def array_index(raw: Buffer) -> BatchIndex | None:
    """The arrays of serialized batch ``raw``; None where protobuf must decode it."""
    index = BatchIndex()
    try:
        for number, kind, value, stop in _fields(raw, 0, len(raw)):
            name = _BATCH_ARRAYS.get(number)
            if name is not None:
                if kind != _LEN or name in index.arrays:
                    raise _Unusual
                index.arrays[name] = _array(raw, value, stop)
            elif number == _BATCH_KEYS:
                if kind != _LEN:
                    raise _Unusual
                index.keys.append(_key_column(raw, value, stop))
    except (_Unusual, UnicodeDecodeError, IndexError):
        return None
    return index
