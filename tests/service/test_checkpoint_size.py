"""Checkpoint files: shared bytes written once, manifests that do not grow with chunks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from rankboard.service.state.batch import RunKey
from rankboard.service.state.store import MetricStore, StoreConfig
from tests.helpers import make_batch

KEY = RunKey("exp", "control", "ctr", "eval")


def open_store(path: Path) -> MetricStore:
    return MetricStore(StoreConfig(data_dir=path, fsync="none", checkpoint_interval_s=3600))


def fill(store: MetricStore, batches: int, n: int, first_seq: int = 1) -> tuple[list, list, list]:
    ps, ys, gs = [], [], []
    rng = np.random.default_rng(first_seq)
    for seq in range(first_seq, first_seq + batches):
        y = (rng.random(n) < 0.4).astype(np.float32)
        p = (0.3 * y + 0.7 * rng.random(n)).astype(np.float32)
        g = rng.integers(0, 40, n).astype(np.int64)
        store.ingest(make_batch(preds=p, labels=y, seq=seq, keys={"user_id": g}))
        ps.append(p)
        ys.append(y)
        gs.append(g)
    return ps, ys, gs


def test_a_batch_is_written_once_however_many_states_keep_it(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    n, batches = 1000, 20
    fill(store, batches, n)
    index = store.checkpoint()
    store.close()
    chunks = tmp_path / "checkpoints" / f"chunks-{index:012d}.pt"
    # exact AUC, grouped AUC and the sample columns all keep the predictions, labels
    # and user ids: on disk once, 4 + 4 + 8 bytes a sample, plus the file's index
    payload = batches * n * (4 + 4 + 8)
    assert payload <= chunks.stat().st_size < payload * 1.1


def test_manifest_does_not_grow_with_the_chunks(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    fill(store, 10, 100)
    small = store.checkpoint()
    fill(store, 400, 100, first_seq=11)
    large = store.checkpoint()
    folder = tmp_path / "checkpoints"
    size = {i: (folder / f"ckpt-{i:012d}.pt").stat().st_size for i in (small, large)}
    # 41 times the chunks, one more checkpoint: a few spans more, not 40 times the refs
    assert size[large] < size[small] * 1.5
    store.close()


def test_spans_round_trip_through_restarts(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    ps, ys, _ = fill(store, 30, 200)
    store.checkpoint()
    more = fill(store, 7, 200, first_seq=31)
    store.checkpoint()
    store.close()
    store = open_store(tmp_path)  # loaded from spans over two chunk files
    more2 = fill(store, 5, 200, first_seq=38)
    store.checkpoint()  # written from loaded chunks: only the new ones
    store.close()
    store = open_store(tmp_path)
    snap, _ = store.snapshot(KEY, fresh=True)
    p = np.concatenate(ps + more[0] + more2[0])
    y = np.concatenate(ys + more[1] + more2[1])
    assert snap.samples == len(p)
    assert snap.metrics["auc"] == pytest.approx(roc_auc_score(y, p), abs=1e-12)
    # every other metric (grouped AUC, NE) as a store that never restarted computes it
    reference = open_store(tmp_path / "reference")
    fill(reference, 30, 200)
    fill(reference, 7, 200, first_seq=31)
    fill(reference, 5, 200, first_seq=38)
    assert snap.metrics == reference.snapshot(KEY, fresh=True)[0].metrics
    reference.close()
    store.close()
