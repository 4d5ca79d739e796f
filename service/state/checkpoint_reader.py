"""The reading side of checkpoints: their file formats, names, and loading one.

See :mod:`rankboard.service.state.checkpoint` (which writes them) for the layout: a
manifest ``ckpt-<i>.pt`` (``RBCK`` + crc32 + a ``torch.save`` payload) and a chunk
file ``chunks-<i>.pt`` (``RBCH`` + crc32 + index length, a pickled index, raw bytes).

Example::

    >>> manifest_path(Path("ck"), 4).name, chunks_path(Path("ck"), 4).name
    ('ckpt-000000000004.pt', 'chunks-000000000004.pt')
"""

from __future__ import annotations

import io
import os
import pickle
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from rankboard.service.state.checksum import crc32

MAGIC = b"RBCK"


class ChunkRef(NamedTuple):
    """Where a retained chunk lives: chunk file ``file`` (a checkpoint index), ``pos``."""

    file: int
    pos: int


class ChunkSpan(NamedTuple):
    """``count`` chunks of a list, in chunk file ``file`` from ``pos`` on, ``step`` apart.

    A manifest stores a chunk list as spans, not one :class:`ChunkRef` a chunk: the
    chunks a checkpoint adds to a list lie next to each other in its chunk file (step
    1), and the empty chunks of an unweighted stream are all one chunk (step 0). So a
    manifest grows with the lists and the checkpoints that fed them, not with the chunks.

    >>> list(span_refs(ChunkSpan(4, 7, 2, 0)))
    [ChunkRef(file=4, pos=7), ChunkRef(file=4, pos=7)]
    """

    file: int
    pos: int
    count: int  # type: ignore[assignment]  # shadows tuple.count; the name is in manifests
    step: int


def span_refs(span: ChunkSpan) -> Iterator[ChunkRef]:
    """The chunk refs of ``span``, in list order."""
    for i in range(span.count):
        yield ChunkRef(span.file, span.pos + i * span.step)


def manifest_path(folder: Path, index: int) -> Path:
    """The manifest file of checkpoint ``index``."""
    return folder / f"ckpt-{index:012d}.pt"


def chunks_path(folder: Path, index: int) -> Path:
    """The chunk file of checkpoint ``index``."""
    return folder / f"chunks-{index:012d}.pt"


def file_indices(folder: Path, prefix: str) -> list[int]:
    """Indices of the ``<prefix>-<index>.pt`` files in ``folder``, ascending."""
    out = []
    for p in folder.glob(f"{prefix}-*.pt"):
        stem = p.stem.removeprefix(f"{prefix}-")
        if stem.isdigit():
            out.append(int(stem))
    return sorted(out)


def list_checkpoints(folder: Path) -> list[int]:
    """WAL indices of the checkpoints (manifests) in ``folder``, ascending."""
    return file_indices(folder, "ckpt")


CHUNKS_MAGIC = b"RBCH"
CHUNKS_HEADER = struct.Struct("<4sIQ")  # magic, crc32 of the rest, length of the index


def read_file(path: Path) -> Any:
    """Read one file written by :func:`write_file`; ValueError when torn or corrupt."""
    data = path.read_bytes()
    if len(data) < 8 or data[:4] != MAGIC:
        raise ValueError(f"{path.name}: not a rankboard checkpoint file")
    (crc,) = struct.unpack_from("<I", data, 4)
    payload = memoryview(data)[8:]
    if crc32(payload) != crc:
        raise ValueError(f"{path.name}: checksum mismatch")
    return torch.load(io.BytesIO(payload), map_location="cpu", weights_only=False)


def read_chunks(path: Path) -> list[torch.Tensor]:
    """Read a file of :func:`write_chunks`; ValueError when torn or corrupt."""
    with open(path, "rb") as f:
        data = bytearray(os.fstat(f.fileno()).st_size)
        f.readinto(data)
    if len(data) < CHUNKS_HEADER.size:
        raise ValueError(f"{path.name}: truncated")
    magic, crc, index_len = CHUNKS_HEADER.unpack_from(data)
    body = memoryview(data)[CHUNKS_HEADER.size :]
    if magic != CHUNKS_MAGIC or crc32(body) != crc:
        raise ValueError(f"{path.name}: not a chunk file or checksum mismatch")
    out = []
    offset = CHUNKS_HEADER.size + index_len
    for dtype_str, shape in pickle.loads(body[:index_len]):
        dtype = np.dtype(dtype_str)
        count = int(np.prod(shape, dtype=np.int64))
        a = np.frombuffer(data, dtype=dtype, count=count, offset=offset).reshape(shape)
        out.append(torch.from_numpy(a))  # shares the (writable) buffer
        offset += count * dtype.itemsize
    return out


def load_checkpoint(
    folder: Path, index: int
) -> tuple[dict[str, Any], dict[int, int], list[tuple[torch.Tensor, ChunkRef]]]:
    """Checkpoint ``index`` of ``folder``: its state, the bytes of each chunk file it
    reads, and where each loaded chunk lies (the writer need not write them again).
    Raises (ValueError, OSError, ...) when a file is missing, torn or corrupt."""
    manifest = read_file(manifest_path(folder, index))
    chunks = {f: read_chunks(chunks_path(folder, f)) for f in manifest["chunk_files"]}
    file_bytes = {
        f: sum(c.numel() * c.element_size() for c in tensors) for f, tensors in chunks.items()
    }

    def resolve(obj: Any) -> Any:
        if isinstance(obj, ChunkRef):  # manifests before spans: a ref a chunk
            return chunks[obj.file][obj.pos]
        if isinstance(obj, dict):
            return {k: resolve(v) for k, v in obj.items()}
        if isinstance(obj, list):
            if obj and isinstance(obj[0], ChunkSpan):
                return [chunks[r.file][r.pos] for span in obj for r in span_refs(span)]
            return [resolve(v) for v in obj]
        return obj

    state = resolve(manifest["state"])
    placed: list[tuple[torch.Tensor, ChunkRef]] = []

    def remember(obj: Any) -> None:
        if isinstance(obj, ChunkRef):
            placed.append((chunks[obj.file][obj.pos], obj))
        elif isinstance(obj, ChunkSpan):
            for r in span_refs(obj):
                placed.append((chunks[r.file][r.pos], r))
        elif isinstance(obj, dict):
            for v in obj.values():
                remember(v)
        elif isinstance(obj, list):
            for v in obj:
                remember(v)

    remember(manifest["state"])
    return state, file_bytes, placed
