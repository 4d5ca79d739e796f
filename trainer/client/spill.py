"""The spill file: unacknowledged batches moved to disk while the service is away.

When the memory bound is reached with ``when_full="spill"``, the accumulator
asks :meth:`SpillStore.spill_oldest` to move the oldest in-memory
unacknowledged batches (already numbered) to an append-only file and free their
memory, so ``log()`` returns at once and training goes on. The sender reads
a spilled batch back (:meth:`SpillStore.read`) when gRPC asks for it on a new
stream, so re-sends keep sequence order; an acknowledged spilled batch is
released (:meth:`SpillStore.release`) and the file is removed once empty. A
warning says when spilling starts (with the file and the count), at most every
30 s while it goes on, and when the spilled batches are through.

Example::

    >>> import tempfile
    >>> from rankboard.protos import ingest_pb2
    >>> from rankboard.protos.stream import Pending, Sender
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     store = SpillStore(Sender("127.0.0.1:1", "p"), folder, max_bytes=1 << 20)
    ...     p = Pending(ingest_pb2.Batch(task="ctr", sequence=4), samples=10, sequence=4)
    ...     store.spill_oldest([p], fits=lambda: store.samples > 0)
    ...     back = ingest_pb2.Batch.FromString(store.read(p))
    ...     store.close()
    True
    >>> p.batch is None, back.task, back.sequence
    (True, 'ctr', 4)
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import time
from collections.abc import Callable, Iterable

from rankboard.protos.stream import Pending, Sender

logger = logging.getLogger(__name__)


class SpillFile:
    """Append-only file of serialized batches; read back by offset (``os.pread``)."""

    def __init__(self, folder: str | None, producer_id: str) -> None:
        safe = "".join(c if c.isalnum() else "-" for c in producer_id)[:40]
        fd, self.path = tempfile.mkstemp(prefix=f"rankboard-spill-{safe}-", dir=folder)
        self._fd = fd
        self.size = 0

    def append(self, data: bytes) -> tuple[int, int]:
        """Write ``data`` at the end; its ``(offset, length)``."""
        offset = self.size
        os.pwrite(self._fd, data, offset)
        self.size += len(data)
        return offset, len(data)

    def read(self, where: tuple[int, int]) -> bytes:
        """The bytes written at ``where`` (``(offset, length)``)."""
        return os.pread(self._fd, where[1], where[0])

    def remove(self) -> None:
        """Close and delete the file (again: nothing)."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)


class SpillStore:
    """Spilled unacknowledged batches of one producer; every method runs with its lock held.

    Args:
        sender: the producer's sender (its id, target and last error go in warnings).
        folder: where the file goes (default: the system temp folder).
        max_bytes: bound on the file; past it nothing more spills.
    """

    def __init__(self, sender: Sender, folder: str | None, max_bytes: int) -> None:
        self.sender = sender
        self.folder = folder
        self.max_bytes = int(max_bytes)
        self.samples = 0  # unacknowledged samples that are in the file
        self.batches_total = 0
        self.samples_total = 0
        self.file: SpillFile | None = None
        self._warned_at = 0.0

    @property
    def size(self) -> int:
        """Bytes in the spill file now."""
        return self.file.size if self.file is not None else 0

    def spill_oldest(self, unacked: Iterable[Pending], fits: Callable[[], bool]) -> bool:
        """Move the oldest in-memory batches to the file until ``fits()``.

        False when nothing could go (all spilled already, or the file is full).
        """
        moved = 0
        for pending in unacked:
            if fits():
                break
            if pending.batch is None:
                continue
            data = pending.batch.SerializeToString()
            if self.file is None:
                self.file = SpillFile(self.folder, self.sender.producer_id)
            if self.file.size + len(data) > self.max_bytes:
                if moved == 0:
                    self._warn(f"spill file full ({self.file.size} bytes); log() blocks")
                break
            pending.stored = self.file.append(data)
            pending.batch = None
            self.samples += pending.samples
            self.batches_total += 1
            self.samples_total += pending.samples
            moved += 1
        if moved:
            self._warn(None)
        return moved > 0

    def read(self, pending: Pending) -> bytes | None:
        """The serialized batch of a spilled entry (None when there is none)."""
        if self.file is None or pending.stored is None:
            return None
        return self.file.read(pending.stored)

    def release(self, pending: Pending) -> None:
        """Account an acknowledged batch; drop the file once it holds nothing unacknowledged."""
        if pending.stored is None:
            return
        self.samples -= pending.samples
        if self.samples == 0 and self.file is not None:
            logger.warning(
                "rankboard stream %s: the service is back; the %d spilled samples went"
                " through, spill file %s removed",
                self.sender.producer_id,
                self.samples_total,
                self.file.path,
            )
            self.file.remove()
            self.file = None
            self._warned_at = 0.0

    def close(self) -> None:
        """Remove the file; what it still holds is logged as never acknowledged."""
        file, self.file = self.file, None
        if file is None:
            return
        file.remove()
        if self.samples:
            logger.error(
                "rankboard stream %s closed with %d spilled samples never acknowledged"
                " (spill file %s removed)",
                self.sender.producer_id,
                self.samples,
                file.path,
            )

    def _warn(self, problem: str | None) -> None:
        now = time.monotonic()
        first = self._warned_at == 0.0
        if not first and now - self._warned_at < 30.0 and problem is None:
            return
        self._warned_at = now
        logger.warning(
            "rankboard stream %s: the service at %s is not acknowledging (last error: %s); %s"
            " %d samples in %d batches spilled so far to %s, %d bytes; training goes on and"
            " they are re-sent in order when the service is back",
            self.sender.producer_id,
            self.sender.target,
            self.sender.last_error,
            problem or ("spilling to disk:" if first else "still spilling:"),
            self.samples_total,
            self.batches_total,
            self.file.path if self.file is not None else "-",
            self.size,
        )
