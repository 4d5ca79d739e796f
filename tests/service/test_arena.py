"""Column arenas: disjoint aligned pieces, bounded slabs, one arena a run, memory that
goes with a deleted experiment."""

from __future__ import annotations

import gc
import itertools
import threading
import weakref

import numpy as np
import torch

from rankboard.protos import ingest_pb2
from rankboard.service.state.arena import ALIGN, ColumnArena
from rankboard.service.state.batch import decode_batch
from rankboard.service.state.store import MetricStore, StoreConfig
from tests.helpers import make_batch


def batch_of(n: int, seq: int = 1, users: int = 50, **kw):  # type: ignore[no-untyped-def]
    """An eval batch of ``n`` samples with a user key (and weights where asked)."""
    rng = np.random.default_rng(seq)
    labels = (rng.random(n) < 0.3).astype(np.float32)
    weights = rng.random(n).astype(np.float32) if kw.pop("weights", False) else None
    return make_batch(
        preds=rng.random(n).astype(np.float32),
        labels=labels,
        seq=seq,
        keys={"user": rng.integers(0, users, n)},
        weights=weights,
        **kw,
    )


def test_pieces_are_disjoint_aligned_and_slabs_double_up_to_the_largest() -> None:
    arena = ColumnArena(first=4096, largest=1 << 16)
    rng = np.random.default_rng(0)
    pieces = []
    for _ in range(400):
        dtype = np.dtype(rng.choice(["<f4", "<f8", "<i8", "<i4"]))
        count = int(rng.integers(1, 1000))
        piece = arena.take(dtype, count)
        assert piece.dtype == dtype and piece.shape == (count,) and piece.flags.writeable
        assert piece.ctypes.data % ALIGN == 0
        piece[:] = len(pieces)
        pieces.append(piece)
    for i, piece in enumerate(pieces):  # no piece was written over by a later one
        assert (piece == i).all()
    spans = sorted((p.ctypes.data, p.ctypes.data + p.nbytes) for p in pieces)
    assert all(end <= nxt for (_, end), (nxt, _) in itertools.pairwise(spans))
    slabs = {id(p.base) for p in pieces if p.base is not None}
    # doubling from 4 KiB to the 64 KiB cap: the reserve is at most 2x what was carved
    used = sum(p.nbytes for p in pieces)
    assert len(slabs) >= 2 and arena.reserved < 2 * used + (1 << 16)


def test_a_large_piece_is_its_own_array() -> None:
    arena = ColumnArena(first=4096, largest=1 << 16)
    big = arena.take(np.dtype(np.float32), 1 << 16)  # 256 KiB > a quarter of the largest slab
    assert big.base is None and arena.reserved == 0


def test_concurrent_takes_never_overlap() -> None:
    arena = ColumnArena(first=4096, largest=1 << 18)
    out: list[list[np.ndarray]] = [[] for _ in range(4)]

    def work(i: int) -> None:
        for _ in range(500):
            out[i].append(arena.take(np.dtype(np.int64), 7))

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    starts = [p.ctypes.data for ps in out for p in ps]
    assert len(set(starts)) == len(starts) == 2000


def test_decode_into_an_arena_equals_the_plain_decode() -> None:
    from rankboard.service.state.arena import Arenas

    msg = batch_of(500, weights=True)
    raw = msg.SerializeToString()
    plain, carved = decode_batch(msg, raw=raw), decode_batch(msg, raw=raw, arenas=Arenas())
    for a, b in [
        (plain.predictions, carved.predictions),
        (plain.labels, carved.labels),
        (plain.weights, carved.weights),
        (plain.grouping_keys["user"], carved.grouping_keys["user"]),
    ]:
        assert a is not None and b is not None and a.dtype == b.dtype and torch.equal(a, b)
    assert carved.predictions.numpy().base is not None  # a piece of a slab


def test_a_deleted_experiments_column_memory_is_freed(tmp_path) -> None:  # type: ignore[no-untyped-def]
    store = MetricStore(StoreConfig(data_dir=tmp_path, fsync="none"))
    try:
        slabs = []
        for exp in ("gone", "kept"):
            for seq in range(1, 4):
                msg = batch_of(2000, seq, experiment=exp, producer=exp)
                store.ingest(msg, raw=msg.SerializeToString())
            (run,) = [r for r in store.runs() if r.key.experiment == exp]
            slabs.append(weakref.ref(store._ledger.arenas.of(run.key)._slab))
        assert store.delete_experiment("gone") > 0
        gc.collect()
        assert slabs[0]() is None, "the deleted experiment's slab is still referenced"
        assert slabs[1]() is not None
    finally:
        store.close()


def test_train_batches_use_no_arena(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from rankboard.service.state.arena import Arenas

    msg = batch_of(100, phase=ingest_pb2.PHASE_TRAIN)
    arenas = Arenas()
    decode_batch(msg, raw=msg.SerializeToString(), arenas=arenas)
    assert len(arenas) == 0
