"""Checkpoints of the whole metric state: checksummed files, written atomically.

A checkpoint file is ``RBCK`` + u32 crc32 + a ``torch.save`` payload, written
to a temporary name, fsynced, then renamed, so a crash leaves either the old or
the new file. :func:`load_latest` returns the newest checkpoint that reads back
whole, falling back to older ones when the newest is corrupt.

Example::

    >>> import tempfile
    >>> d = Path(tempfile.mkdtemp())
    >>> _ = save_checkpoint(d, 3, {"x": 1})
    >>> load_latest(d)
    (3, {'x': 1})
"""

from __future__ import annotations

import io
import logging
import os
import struct
import zlib
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)
_MAGIC = b"RBCK"
KEEP = 2


def _path(folder: Path, wal_index: int) -> Path:
    return folder / f"ckpt-{wal_index:012d}.pt"


def checkpoint_size(folder: Path, wal_index: int) -> int:
    """Bytes of the checkpoint at ``wal_index`` (0 when there is none)."""
    try:
        return _path(folder, wal_index).stat().st_size
    except FileNotFoundError:
        return 0


def list_checkpoints(folder: Path) -> list[int]:
    """WAL indices of the checkpoints in ``folder``, ascending."""
    out = []
    for p in folder.glob("ckpt-*.pt"):
        stem = p.stem.removeprefix("ckpt-")
        if stem.isdigit():
            out.append(int(stem))
    return sorted(out)


class _CrcWriter:
    """A write-only file object that keeps the crc32 of what went through it."""

    def __init__(self, f: io.BufferedWriter) -> None:
        self._f = f
        self.crc = 0

    def write(self, data: bytes) -> int:
        self.crc = zlib.crc32(data, self.crc)
        return self._f.write(data)

    def flush(self) -> None:
        self._f.flush()


def save_checkpoint(folder: Path, wal_index: int, state: dict[str, Any]) -> Path:
    """Write ``state`` as the checkpoint from which replay starts at ``wal_index``."""
    folder.mkdir(parents=True, exist_ok=True)
    final = _path(folder, wal_index)
    tmp = final.with_suffix(".tmp")
    with open(tmp, "wb") as f:
        f.write(_MAGIC + b"\0\0\0\0")
        out = _CrcWriter(f)
        torch.save(state, out)  # streamed: no second copy of the state in memory
        f.seek(len(_MAGIC))
        f.write(struct.pack("<I", out.crc))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, final)
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    for old in list_checkpoints(folder)[:-KEEP]:
        _path(folder, old).unlink(missing_ok=True)
    return final


def read_checkpoint(path: Path) -> dict[str, Any]:
    """Read one checkpoint; raise ValueError when it is torn or corrupt."""
    data = path.read_bytes()
    if len(data) < 8 or data[:4] != _MAGIC:
        raise ValueError(f"{path.name}: not a rankboard checkpoint")
    (crc,) = struct.unpack_from("<I", data, 4)
    payload = data[8:]
    if zlib.crc32(payload) != crc:
        raise ValueError(f"{path.name}: checksum mismatch")
    return torch.load(io.BytesIO(payload), map_location="cpu", weights_only=False)


def load_latest(folder: Path) -> tuple[int, dict[str, Any]] | None:
    """Return ``(wal_index, state)`` of the newest good checkpoint, or None."""
    for index in reversed(list_checkpoints(folder)):
        try:
            return index, read_checkpoint(_path(folder, index))
        except Exception as err:  # noqa: BLE001 - any unreadable file falls back
            log.warning("checkpoint %s unreadable (%s); trying an older one", index, err)
    return None
