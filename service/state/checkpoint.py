"""Incremental checkpoints of the whole metric state: checksummed files, written atomically.

The exact metrics retain their samples as lists of chunk tensors that are only ever
appended to (see :meth:`RankMetric.state_snapshot`), so a checkpoint writes each chunk
once. Checkpoint ``i`` is two files:

* ``chunks-i.pt``: the chunks that no earlier checkpoint holds, as raw bytes behind an
  index (absent when none are new);
* ``ckpt-i.pt``: the manifest, the state with every chunk replaced by a
  :class:`ChunkRef` to the file and position that hold it, and the chunk files it needs.

Both carry a crc32 of their content (the manifest is ``RBCK`` + crc + a ``torch.save``
payload) and are streamed to a temporary name,
fsynced and renamed (chunks first), so a crash leaves either the old or the new
checkpoint. :meth:`Checkpoints.load_latest` returns the newest checkpoint that reads
back whole, falling back to older ones when a file is corrupt. Chunk files no kept
checkpoint refers to are deleted.

Example::

    >>> import tempfile
    >>> tmp = tempfile.TemporaryDirectory()
    >>> ckpts = Checkpoints(Path(tmp.name))
    >>> chunk = torch.arange(3)
    >>> _ = ckpts.save(3, {"x": 1, "chunks": [chunk]})
    >>> _ = ckpts.save(4, {"x": 2, "chunks": [chunk, torch.arange(2)]})  # writes 1 chunk
    >>> index, state = Checkpoints(ckpts.folder).load_latest()
    >>> index, state["x"], [c.tolist() for c in state["chunks"]]
    (4, 2, [[0, 1, 2], [0, 1]])
    >>> tmp.cleanup()
"""

from __future__ import annotations

import io
import logging
import os
import pickle
import struct
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any, cast

import torch

from rankboard.service.state.checkpoint_reader import (  # re-exported: public names
    CHUNKS_HEADER,
    CHUNKS_MAGIC,
    MAGIC,
    ChunkRef,
    ChunkSpan,
    chunks_path,
    file_indices,
    list_checkpoints,
    load_checkpoint,
    manifest_path,
    read_chunks,
    read_file,
)
from rankboard.service.state.checksum import crc32
from rankboard.service.state.chunk_lists import ListCache, Placed, StatePath

log = logging.getLogger(__name__)

__all__ = [
    "COMPACT_BELOW",
    "KEEP",
    "Checkpoints",
    "ChunkRef",
    "ChunkSpan",
    "fsync_dir",
    "list_checkpoints",
    "read_chunks",
    "read_file",
    "write_chunks",
    "write_file",
]

KEEP = 2
COMPACT_BELOW = 0.5  # a chunk file less live than this is rewritten by the next checkpoint
# a chunk file is synced every this many bytes as it is written (RocksDB's bytes_per_sync):
# a checkpoint's hundreds of MiB of dirty pages, flushed at once, made every log sync
# behind them wait (ext4 commits its journal in order), and acks with them
SYNC_EVERY = 8 << 20


def _spans(refs: list[ChunkRef]) -> list[ChunkSpan]:
    """``refs`` (one a chunk, in list order) as the fewest :class:`ChunkSpan`.

    >>> _spans([ChunkRef(3, 0), ChunkRef(3, 1), ChunkRef(3, 2), ChunkRef(4, 7), ChunkRef(4, 7)])
    [ChunkSpan(file=3, pos=0, count=3, step=1), ChunkSpan(file=4, pos=7, count=2, step=0)]
    """
    out: list[list[int]] = []  # [file, pos, count, step], as tuples at the end
    last: list[int] = [-1, 0, 0, 1]
    for file, pos in refs:
        if file == last[0]:
            if last[2] == 1 and pos - last[1] in (0, 1):
                last[2], last[3] = 2, pos - last[1]
                continue
            if last[2] > 1 and pos == last[1] + last[2] * last[3]:
                last[2] += 1
                continue
        last = [file, pos, 1, 1]
        out.append(last)
    return [ChunkSpan(*span) for span in out]


def _same_bytes(chunk: torch.Tensor) -> tuple:
    """A key equal for the tensors (alive together) that view the same bytes the same way.

    Retained columns and metric states hold different tensor objects over the same
    memory (a batch's predictions are kept by the sample columns and by AUC): a
    checkpoint writes such bytes once. Empty chunks all share one key per dtype.
    """
    if chunk.numel() == 0:
        return (0, chunk.dtype, tuple(chunk.shape), chunk.device)
    return (chunk.data_ptr(), chunk.dtype, tuple(chunk.shape), chunk.stride(), chunk.device)


class _CrcWriter:
    """A write-only file object that keeps the crc32 of what went through it."""

    def __init__(self, f: io.BufferedWriter) -> None:
        self._f = f
        self.crc = 0

    def write(self, data: bytes) -> int:
        self.crc = crc32(data, self.crc)
        return self._f.write(data)

    def flush(self) -> None:
        self._f.flush()


def fsync_dir(folder: Path) -> None:
    """fsync ``folder`` (renames and unlinks in it reach the disk)."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _atomic_write(final: Path, fill: Callable[[io.BufferedWriter], None]) -> int:
    """Write ``final`` through ``fill`` to a temporary file, fsync, rename; return the size.

    On any failure (disk full, I/O error) no half file is left behind.
    """
    tmp = final.with_suffix(".tmp")
    try:
        with open(tmp, "wb") as f:
            fill(f)
            f.flush()
            os.fsync(f.fileno())
            size = f.seek(0, os.SEEK_END)
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return size


def write_file(final: Path, obj: Any) -> int:
    """Stream ``obj`` to ``final`` atomically (magic, crc32, torch.save); return its size."""

    def fill(f: io.BufferedWriter) -> None:
        f.write(MAGIC + b"\0\0\0\0")
        out = _CrcWriter(f)
        # streamed: no second copy of the state in memory
        torch.save(obj, cast(IO[bytes], out))
        f.seek(len(MAGIC))
        f.write(struct.pack("<I", out.crc))

    return _atomic_write(final, fill)


def write_chunks(final: Path, chunks: list[torch.Tensor]) -> int:
    """Write CPU tensors as raw bytes behind a small index, atomically; return the size.

    Faster than ``torch.save`` for thousands of chunks: one pass of ``write`` and crc32
    over the tensors' own memory, no per-tensor archive entries.
    """
    arrays = [c.contiguous().numpy() for c in chunks]
    index = pickle.dumps([(a.dtype.str, a.shape) for a in arrays])

    def fill(f: io.BufferedWriter) -> None:
        f.write(CHUNKS_HEADER.pack(CHUNKS_MAGIC, 0, len(index)))
        crc = crc32(index)
        f.write(index)
        unsynced = 0
        for a in arrays:
            view = a.data.cast("B")
            crc = crc32(view, crc)
            f.write(view)
            unsynced += len(view)
            if unsynced >= SYNC_EVERY:  # see SYNC_EVERY
                f.flush()
                os.fdatasync(f.fileno())
                unsynced = 0
        f.seek(0)
        f.write(CHUNKS_HEADER.pack(CHUNKS_MAGIC, crc, len(index)))

    return _atomic_write(final, fill)


def _all_tensors(items: list[Any]) -> bool:
    return all(isinstance(x, torch.Tensor) for x in items)


def _is_chunk_list(obj: Any) -> bool:
    return isinstance(obj, list) and bool(obj) and _all_tensors(obj)


def _tensor_lists(obj: Any, path: StatePath) -> Iterator[tuple[StatePath, list[torch.Tensor]]]:
    """The lists in ``obj`` (at any depth) that start with a tensor, with their place:
    the candidates for chunk lists, found without looking past their first element."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _tensor_lists(v, (*path, k))
    elif isinstance(obj, list) and obj:
        if isinstance(obj[0], torch.Tensor):
            yield path, obj
        else:
            for i, v in enumerate(obj):
                yield from _tensor_lists(v, (*path, i))


def _chunks_of(obj: Any) -> Iterator[torch.Tensor]:
    """Every retained chunk in ``obj`` (lists of tensors, at any depth)."""
    if isinstance(obj, dict):
        for v in obj.values():
            yield from _chunks_of(v)
    elif _is_chunk_list(obj):
        yield from obj
    elif isinstance(obj, list):
        for v in obj:
            yield from _chunks_of(v)


class Checkpoints:
    """The checkpoints of one data dir, remembering which chunks are already on disk."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        # chunk tensor (by identity) -> where it was written; entries vanish with it
        self._written = Placed()
        self._file_bytes: dict[int, int] = {}  # chunk file -> bytes of the chunks in it
        self._lists = ListCache()  # the chunk lists of the last checkpoint (chunk_lists.py)

    def live_fractions(self, state: dict[str, Any]) -> dict[int, float]:
        """For each chunk file ``state`` refers to, the fraction of its bytes still live.

        Chunks of deleted runs stay in their file as long as a live chunk shares it.
        """
        live: dict[int, int] = {}
        seen: set[ChunkRef] = set()
        for chunk in _chunks_of(state):
            where = self._written.get(chunk)
            if where is None or where in seen:  # a chunk counts once, however many views
                continue
            seen.add(where)
            live[where.file] = live.get(where.file, 0) + chunk.numel() * chunk.element_size()
        return {
            file: nbytes / self._file_bytes[file]
            for file, nbytes in live.items()
            if self._file_bytes.get(file)
        }

    def save(self, index: int, state: dict[str, Any]) -> int:
        """Write ``state`` as the checkpoint from which replay starts at ``index``.

        Lists of tensors in ``state`` are retained chunks: each is written once, by the
        first checkpoint that sees it, except that the live chunks of a chunk file less
        than :data:`COMPACT_BELOW` live (most of it deleted runs) are written again into
        this checkpoint's file, so the old file is collected once no kept checkpoint
        needs it. Returns the bytes written.
        """
        self.folder.mkdir(parents=True, exist_ok=True)
        new: list[torch.Tensor] = []
        fresh: dict[tuple, ChunkRef] = {}  # same-bytes key -> where, for this file's chunks
        placed: list[tuple[torch.Tensor, ChunkRef]] = []  # every tensor object written now
        files: set[int] = set()
        lists = self._lists
        full = not lists  # the first checkpoint of this process: nothing to match against
        lists.start()
        grown = {p: e for p, c in _tensor_lists(state, ()) if (e := lists.match(p, c)) is not None}
        compact: set[int] = set()
        if full or not lists.all_matched():  # chunks left the state: reconsider compaction
            compact = {f for f, frac in self.live_fractions(state).items() if frac < COMPACT_BELOW}
        if compact:
            log.info("checkpoint %d compacts chunk files %s (mostly dead)", index, sorted(compact))

        def ref(chunk: torch.Tensor) -> ChunkRef:
            where = self._written.get(chunk)
            if where is not None and where.file in compact:
                where = None
            if where is None:
                key = _same_bytes(chunk)  # shared by several metrics or the columns
                where = fresh.get(key)
                if where is None:
                    where = ChunkRef(index, len(new))
                    new.append(chunk.detach().cpu())
                    fresh[key] = where
                placed.append((chunk, where))
            files.add(where.file)
            return where

        def chunk_list(chunks: list[torch.Tensor], path: StatePath) -> list[ChunkSpan] | None:
            """The spans of a chunk list (None: not one); a list that only grew since
            the last checkpoint keeps its spans, and only its new chunks are looked up."""
            entry = grown.get(path)
            tail = chunks[entry.count :] if entry is not None else chunks
            if entry is not None and (entry.files & compact or not _all_tensors(tail)):
                entry, tail = None, chunks
            if entry is None and not _is_chunk_list(chunks):
                return None
            refs = [ref(c) for c in tail]
            spans = (entry.spans if entry is not None else []) + _spans(refs)
            list_files = {r.file for r in refs} | (entry.files if entry is not None else set())
            files.update(list_files)
            lists.remember(path, chunks, spans, list_files)
            return spans

        def externalize(obj: Any, path: StatePath) -> Any:
            if isinstance(obj, dict):
                return {k: externalize(v, (*path, k)) for k, v in obj.items()}
            if isinstance(obj, list):
                spans = chunk_list(obj, path) if obj and isinstance(obj[0], torch.Tensor) else None
                if spans is not None:
                    return spans
                return [externalize(v, (*path, i)) for i, v in enumerate(obj)]
            if isinstance(obj, torch.Tensor):
                return obj.detach().cpu()
            return obj

        try:
            manifest = {"state": externalize(state, ()), "chunk_files": sorted(files)}
            size = 0
            if new:
                size += write_chunks(chunks_path(self.folder, index), new)
                self._file_bytes[index] = sum(c.numel() * c.element_size() for c in new)
            size += write_file(manifest_path(self.folder, index), manifest)
            fsync_dir(self.folder)
        except BaseException:
            lists.forget()
            raise
        lists.commit()
        for chunk, where in placed:  # on disk now: later checkpoints refer to it
            self._written[chunk] = where
        self._collect_garbage()
        return size

    def _collect_garbage(self) -> None:
        """Keep the newest :data:`KEEP` manifests that read back, and the chunk files they use.

        Manifests that do not read back do not count: the newest good checkpoint (and
        the log from it, see :meth:`oldest_kept`) is never dropped for a bad newer one.
        """
        manifests = list_checkpoints(self.folder)
        needed: set[int] = set()
        good = 0
        cut = 0  # manifests before this position are dropped
        for pos in range(len(manifests) - 1, -1, -1):
            if good >= KEEP:
                cut = pos + 1
                break
            try:
                needed.update(read_file(manifest_path(self.folder, manifests[pos]))["chunk_files"])
                good += 1
            except Exception:  # noqa: BLE001 - an unreadable manifest protects nothing
                log.warning("checkpoint %d does not read back; older ones are kept", manifests[pos])
        for old in manifests[:cut]:
            manifest_path(self.folder, old).unlink(missing_ok=True)
        oldest = manifests[cut] if manifests else 0
        for index in file_indices(self.folder, "chunks"):
            # chunk files newer than the kept manifests belong to a checkpoint in progress
            if index not in needed and index < oldest:
                chunks_path(self.folder, index).unlink(missing_ok=True)
                self._file_bytes.pop(index, None)

    def _load(self, index: int) -> dict[str, Any]:
        state, file_bytes, placed = load_checkpoint(self.folder, index)
        self._file_bytes.update(file_bytes)
        for chunk, where in placed:  # loaded chunks are on disk already
            self._written[chunk] = where
        return state

    def oldest_kept(self) -> int | None:
        """The oldest checkpoint kept (the log from its index on must be kept), or None."""
        kept = list_checkpoints(self.folder)
        return kept[0] if kept else None

    def load_latest(self) -> tuple[int, dict[str, Any]] | None:
        """``(wal_index, state)`` of the newest checkpoint that reads back whole, or None."""
        for index in reversed(list_checkpoints(self.folder)):
            try:
                return index, self._load(index)
            except Exception as err:  # noqa: BLE001 - any unreadable file falls back
                log.warning("checkpoint %s unreadable (%s); trying an older one", index, err)
        return None
