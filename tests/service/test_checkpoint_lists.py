"""Checkpoints that only look at the chunks appended since the last one still read back
as the state they were given, whatever happened to the lists in between: growth, chunks
shared between lists, lists that begin with the same chunk, trimmed fronts, deleted
lists (compaction), a failed checkpoint."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from rankboard.service.state.checkpoint import Checkpoints


def assert_reads_back(folder: Path, index: int, state: dict[str, list[torch.Tensor]]) -> None:
    loaded = Checkpoints(folder).load_latest()
    assert loaded is not None and loaded[0] == index
    got = loaded[1]
    assert sorted(got) == sorted(state)
    for name, chunks in state.items():
        assert len(got[name]) == len(chunks), name
        for a, b in zip(got[name], chunks, strict=True):
            assert a.dtype == b.dtype and torch.equal(a, b), name


def test_random_histories_read_back(tmp_path: Path) -> None:
    rng = np.random.default_rng(17)
    ckpts = Checkpoints(tmp_path)
    lists: dict[str, list[torch.Tensor]] = {}
    made = 0
    index = 0
    for _ in range(400):
        op = rng.random()
        names = sorted(lists)
        if op < 0.45 or not names:  # a batch: new chunks at the end of a few lists
            for name in rng.choice([*names, f"l{made}"], size=min(3, len(names) + 1)):
                if name not in lists:
                    made += 1
                chunk = torch.from_numpy(rng.integers(0, 1000, int(rng.integers(0, 6))))
                lists.setdefault(str(name), []).append(chunk)
        elif op < 0.55:  # a chunk object kept by two lists (columns and a metric)
            src, dst = rng.choice(names, 2)
            lists[str(dst)].append(lists[str(src)][-1])
        elif op < 0.6:  # a new list beginning with another list's first chunk
            made += 1
            lists[f"l{made}"] = [lists[str(rng.choice(names))][0]]
        elif op < 0.67:  # a window moves: the front chunk is cut or dropped
            chunks = lists[str(rng.choice(names))]
            if len(chunks) > 1 and rng.random() < 0.5:
                chunks.pop(0)
            else:
                chunks[0] = chunks[0][1:]
        elif op < 0.72:  # a run deleted
            del lists[str(rng.choice(names))]
        else:  # a checkpoint of the state as it is now (new list objects, as the store's)
            index += 1
            state = {name: list(chunks) for name, chunks in lists.items() if chunks}
            ckpts.save(index, state)
            assert_reads_back(tmp_path, index, state)
    assert index > 50


def test_a_failed_checkpoint_leaves_the_next_one_whole(tmp_path: Path, monkeypatch) -> None:
    import rankboard.service.state.checkpoint as checkpoint

    ckpts = Checkpoints(tmp_path)
    chunks = [torch.arange(3), torch.arange(4)]
    ckpts.save(1, {"a": list(chunks)})
    chunks.append(torch.arange(5))
    real = checkpoint.write_file

    def full_disk(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(checkpoint, "write_file", full_disk)
    with pytest.raises(OSError):
        ckpts.save(2, {"a": list(chunks)})
    monkeypatch.setattr(checkpoint, "write_file", real)
    chunks.append(torch.arange(6))
    ckpts.save(3, {"a": list(chunks)})
    assert_reads_back(tmp_path, 3, {"a": chunks})


def test_a_grown_list_is_not_walked_again(tmp_path: Path, monkeypatch) -> None:
    """The chunks a list held at the last checkpoint are not looked up again."""
    import rankboard.service.state.checkpoint as checkpoint

    ckpts = Checkpoints(tmp_path)
    chunks = [torch.arange(i + 1) for i in range(1000)]
    ckpts.save(1, {"a": list(chunks)})
    seen: list[int] = []
    real = checkpoint._same_bytes

    def counting(chunk: torch.Tensor) -> tuple:
        seen.append(id(chunk))
        return real(chunk)

    monkeypatch.setattr(checkpoint, "_same_bytes", counting)
    looked: list[torch.Tensor] = []
    real_get = ckpts._written.get
    monkeypatch.setattr(ckpts._written, "get", lambda c: looked.append(c) or real_get(c))
    chunks += [torch.arange(7), torch.arange(8)]
    ckpts.save(2, {"a": list(chunks)})
    assert len(looked) == 2 and len(seen) == 2
    assert_reads_back(tmp_path, 2, {"a": chunks})


def test_lists_that_begin_and_end_alike_keep_their_own_middles(tmp_path: Path) -> None:
    first, last = torch.arange(2), torch.arange(3)
    a = [first, torch.full((4,), 7), last]
    b = [first, torch.full((4,), 9), last]
    ckpts = Checkpoints(tmp_path)
    ckpts.save(1, {"a": list(a), "b": list(b)})
    a.append(torch.arange(5))
    b.append(torch.arange(6))
    ckpts.save(2, {"a": list(a), "b": list(b)})
    assert_reads_back(tmp_path, 2, {"a": a, "b": b})


def test_a_mostly_deleted_chunk_file_is_compacted_while_other_lists_grow(
    tmp_path: Path,
) -> None:
    from rankboard.service.state.checkpoint import chunks_path

    big = [torch.zeros(10_000) for _ in range(10)]  # a run that will be deleted
    small = [torch.arange(10)]  # a run that lives on, in the same chunk file
    ckpts = Checkpoints(tmp_path)
    ckpts.save(1, {"big": list(big), "small": list(small)})
    for index in range(2, 6):  # the big run is gone; the small one keeps growing
        small.append(torch.arange(index))
        ckpts.save(index, {"small": list(small)})
    assert not chunks_path(tmp_path, 1).exists(), "the dead chunk file was not compacted"
    assert_reads_back(tmp_path, 5, {"small": small})
