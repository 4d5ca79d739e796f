"""Where retained chunks are on disk: each chunk by identity (:class:`Placed`), and each
chunk list as the last checkpoint wrote it, so the next one only looks at the chunks
appended since (:class:`ListCache`).

A checkpoint's state holds every run's retained chunk lists (new list objects each time,
over the same chunk tensors). Externalizing a list means one lookup per chunk, and the
decision to compact needs a walk over all of them: work that grew with everything a
run ever kept, at every checkpoint (a 50M-sample run in 8,192-sample batches holds ~30k
chunks; a checkpoint comes every 256 MiB of log). Lists only grow at their end, or lose
chunks at their front (windowed metrics) or as a whole (deleted runs).

:class:`ListCache` remembers, for each list of the last checkpoint, by its place in the
state, its first and last chunk (weak references), its length and its spans. A list of
the next checkpoint at that place whose first chunk is that same tensor, at least as
long, with the same chunk at the remembered last position, has only grown: its
remembered spans stand, and only the new chunks are looked up. Whatever does not match
is done in full; a remembered list that nothing matches means chunks left the state (a
delete, a trimmed window), which is when compaction must be reconsidered.

Example::

    >>> import torch
    >>> from rankboard.service.state.checkpoint_reader import ChunkSpan
    >>> a, b, c = torch.arange(2), torch.arange(3), torch.arange(4)
    >>> cache = ListCache()
    >>> cache.start(); cache.remember(("auc", "preds"), [a, b], [ChunkSpan(1, 0, 2, 1)], {1})
    >>> cache.commit(); cache.start()
    >>> hit = cache.match(("auc", "preds"), [a, b, c])
    >>> hit.count, hit.spans, cache.all_matched()
    (2, [ChunkSpan(file=1, pos=0, count=2, step=1)], True)
    >>> cache.start(); cache.match(("auc", "preds"), [b, c]) is None, cache.all_matched()
    (True, False)
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import torch

from rankboard.service.state.checkpoint_reader import ChunkRef, ChunkSpan

__all__ = ["ListCache", "ListEntry", "Placed", "StatePath"]


@dataclass
class ListEntry:
    """A chunk list as the last checkpoint wrote it."""

    first: weakref.ref
    last: weakref.ref
    count: int
    spans: list[ChunkSpan]
    files: set[int]


StatePath = tuple[object, ...]  # where a list lies in the state: dict keys and list positions


class ListCache:
    """The chunk lists of the last checkpoint, by their place in the state (see the
    module). A place holds one list, so two lists never stand for each other, even
    when they share chunks (two metrics keeping the same batch)."""

    def __init__(self) -> None:
        self._entries: dict[StatePath, ListEntry] = {}
        self._next: dict[StatePath, ListEntry] = {}
        self._used = 0

    def __bool__(self) -> bool:
        return bool(self._entries)

    def start(self) -> None:
        """Begin matching the lists of a new checkpoint."""
        self._next, self._used = {}, 0

    def match(self, path: StatePath, chunks: list[torch.Tensor]) -> ListEntry | None:
        """The entry of the list at ``path`` that ``chunks`` grew from, or None."""
        entry = self._entries.get(path)
        if (
            entry is None
            or entry.first() is not chunks[0]
            or len(chunks) < entry.count
            or entry.last() is not chunks[entry.count - 1]
        ):
            return None
        self._used += 1
        return entry

    def all_matched(self) -> bool:
        """Whether every list of the last checkpoint grew into one of this checkpoint
        (call after matching each list once)."""
        return self._used == len(self._entries)

    def remember(
        self, path: StatePath, chunks: list[torch.Tensor], spans: list[ChunkSpan], files: set[int]
    ) -> None:
        """Note how this checkpoint wrote ``chunks`` (kept once :meth:`commit` is called)."""
        self._next[path] = ListEntry(
            weakref.ref(chunks[0]), weakref.ref(chunks[-1]), len(chunks), spans, files
        )

    def commit(self) -> None:
        """The checkpoint is on disk: its lists are what the next one matches against."""
        self._entries, self._next = self._next, {}

    def forget(self) -> None:
        """Match nothing next time (after a failed checkpoint)."""
        self._entries, self._next, self._used = {}, {}, 0


class Placed:
    """Where chunks were written, by tensor identity; an entry goes with its tensor.

    A dict on ``id`` with a weak reference to tell a reused id from the tensor itself
    (``torch.utils.weak.WeakIdKeyDictionary`` did the same in Python a lookup, 3 us a
    chunk: half a second a checkpoint at 70k chunks). Any doubt reads as "not written"
    (the chunk is written again), never as another tensor's place.

    >>> placed, t = Placed(), torch.arange(3)
    >>> placed[t] = ChunkRef(1, 0)
    >>> placed.get(t), placed.get(torch.arange(3))
    (ChunkRef(file=1, pos=0), None)
    """

    def __init__(self) -> None:
        self._by_id: dict[int, tuple[weakref.ref, ChunkRef]] = {}

    def get(self, chunk: torch.Tensor) -> ChunkRef | None:
        entry = self._by_id.get(id(chunk))
        if entry is None or entry[0]() is not chunk:
            return None
        return entry[1]

    def __setitem__(self, chunk: torch.Tensor, where: ChunkRef) -> None:
        key, by_id = id(chunk), self._by_id

        def gone(ref: weakref.ref) -> None:  # the tensor was freed: its id may be reused
            entry = by_id.get(key)
            if entry is not None and entry[0] is ref:
                by_id.pop(key, None)

        by_id[key] = (weakref.ref(chunk, gone), where)
