"""Write-ahead log and checkpoints on real files: torn tails, corrupt checkpoints."""

from __future__ import annotations

import errno
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from rankboard.service.state import wal as wal_module
from rankboard.service.state.batch import RunKey
from rankboard.service.state.store import MetricStore, StateLost, StoreConfig
from rankboard.service.state.wal import RECORD_BATCH, LogFailed, WriteAheadLog
from tests.helpers import make_batch

KEY = RunKey("exp", "control", "ctr", "eval")


def data(seed: int, n: int = 300) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.4).astype(np.float32)
    return np.round(0.3 * y + 0.7 * rng.random(n), 2).astype(np.float32), y


def open_store(path: Path) -> MetricStore:
    return MetricStore(StoreConfig(data_dir=path, checkpoint_interval_s=3600))


def auc_of(store: MetricStore) -> tuple[int, float]:
    snap, _ = store.snapshot(KEY, fresh=True)
    return snap.samples, snap.metrics["auc"]


def test_torn_tail_is_cut_and_the_rest_replays(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    (p1, y1), (p2, y2) = data(1), data(2)
    store.ingest(make_batch(preds=p1, labels=y1, seq=1))
    store.ingest(make_batch(preds=p2, labels=y2, seq=2))
    store.close()
    seg = sorted((tmp_path / "wal").glob("*.wal"))[-1]
    size = seg.stat().st_size
    with open(seg, "r+b") as f:  # a crash in the middle of the second record
        f.truncate(size - 100)
    store = open_store(tmp_path)
    assert auc_of(store) == (300, pytest.approx(roc_auc_score(y1, p1), abs=1e-12))
    # the producer's second batch was never acknowledged durably: it applies when re-sent
    assert not store.ingest(make_batch(preds=p2, labels=y2, seq=2)).duplicate
    store.close()


def test_corrupt_record_stops_replay_there(tmp_path: Path) -> None:
    wal = WriteAheadLog(tmp_path)
    for i in range(3):
        wal.append(RECORD_BATCH, bytes([i]) * 50)
    wal.close()
    seg = next(tmp_path.glob("*.wal"))
    raw = bytearray(seg.read_bytes())
    raw[len(raw) - 10] ^= 0xFF  # flip a byte of the last payload
    seg.write_bytes(bytes(raw))
    assert [p for _, _, p in WriteAheadLog(tmp_path).replay(0)] == [b"\0" * 50, b"\1" * 50]


def test_corrupt_checkpoint_falls_back_to_the_previous_one(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    ps, ys = [], []
    for i in range(3):
        p, y = data(10 + i)
        ps.append(p)
        ys.append(y)
        store.ingest(make_batch(preds=p, labels=y, seq=i + 1))
        store.checkpoint()
    expected = auc_of(store)
    store.close()
    newest = sorted((tmp_path / "checkpoints").glob("ckpt-*.pt"))[-1]
    raw = bytearray(newest.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    newest.write_bytes(bytes(raw))
    store = open_store(tmp_path)
    assert auc_of(store) == expected
    assert expected[1] == pytest.approx(
        roc_auc_score(np.concatenate(ys), np.concatenate(ps)), abs=1e-12
    )
    assert store.ingest(make_batch(preds=ps[2], labels=ys[2], seq=3)).duplicate
    store.close()


def test_checkpoint_bounds_the_log(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    for i in range(4):
        p, y = data(20 + i)
        store.ingest(make_batch(preds=p, labels=y, seq=i + 1))
        store.checkpoint()
    segments = sorted((tmp_path / "wal").glob("*.wal"))
    checkpoints = sorted((tmp_path / "checkpoints").glob("ckpt-*.pt"))
    assert len(checkpoints) == 2
    oldest_kept = int(checkpoints[0].stem.removeprefix("ckpt-"))
    assert all(int(s.stem) >= oldest_kept for s in segments)
    store.close()


def test_time_to_live_deletes_idle_experiments(tmp_path: Path) -> None:
    store = MetricStore(StoreConfig(data_dir=tmp_path, ttl_s=60))
    p, y = data(30)
    store.ingest(make_batch(preds=p, labels=y, experiment="old", seq=1))
    store.ingest(make_batch(preds=p, labels=y, experiment="new", seq=2))
    store.run(RunKey("old", "control", "ctr", "eval")).updated_at -= 120
    assert store.expire(mono_now=time.monotonic() + 120) == ["old"]
    assert [r.key.experiment for r in store.runs()] == ["new"]
    store.close()
    store = open_store(tmp_path)  # the deletion is durable
    assert [r.key.experiment for r in store.runs()] == ["new"]
    store.close()


def test_group_commit_makes_every_concurrent_append_durable(tmp_path: Path) -> None:
    wal = WriteAheadLog(tmp_path, fsync="batch")
    lsns: list[int] = []
    lock = threading.Lock()

    def writer(w: int) -> None:
        for i in range(50):
            lsn = wal.append(RECORD_BATCH, f"{w}:{i}".encode())  # wait=True: durable now
            assert wal.is_durable(lsn)
            with lock:
                lsns.append(lsn)

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    late = wal.append(RECORD_BATCH, b"late", wait=False)
    wal.wait_durable(late)
    assert wal.is_durable(late) and late == wal.lsn
    wal.close()
    assert len(set(lsns)) == 200 and max(lsns) < late
    records = [p.decode() for _, _, p in WriteAheadLog(tmp_path).replay(0)]
    assert sorted(records[:-1]) == sorted(f"{w}:{i}" for w in range(4) for i in range(50))
    assert records[-1] == "late"


def test_a_failed_sync_acknowledges_nothing_more(tmp_path: Path, monkeypatch) -> None:
    wal = WriteAheadLog(tmp_path, fsync="batch")
    wal.append(RECORD_BATCH, b"kept")

    def broken(fd: int) -> None:
        raise OSError(errno.EIO, "injected I/O error")

    monkeypatch.setattr(wal_module.os, "fdatasync", broken)
    with pytest.raises(LogFailed, match="injected I/O error"):
        wal.append(RECORD_BATCH, b"not acknowledged")
    with pytest.raises(LogFailed):  # and nothing is taken afterwards
        wal.append(RECORD_BATCH, b"refused")
    monkeypatch.undo()
    wal.close()
    assert [p for _, _, p in WriteAheadLog(tmp_path).replay(0)] == [b"kept", b"not acknowledged"]


def test_checkpoints_write_each_retained_chunk_once(tmp_path: Path) -> None:
    store = open_store(tmp_path)  # no background checkpoint in this test (huge thresholds)
    ps, ys = [], []
    for i in range(3):
        p, y = data(40 + i, n=4000)
        ps.append(p)
        ys.append(y)
        store.ingest(make_batch(preds=p, labels=y, seq=i + 1))
    first = store.checkpoint()
    written_first = store.checkpointer.last_bytes
    p, y = data(50, n=500)
    ps.append(p)
    ys.append(y)
    store.ingest(make_batch(preds=p, labels=y, seq=4))
    second = store.checkpoint()
    # 500 new samples against 12000 retained: only the new chunks and a manifest
    assert store.checkpointer.last_bytes < written_first / 4
    folder = tmp_path / "checkpoints"
    assert (folder / f"chunks-{first:012d}.pt").exists()
    assert (folder / f"chunks-{second:012d}.pt").exists()
    store.close()

    store = open_store(tmp_path)
    samples, auc = auc_of(store)
    assert samples == 12500
    assert auc == pytest.approx(roc_auc_score(np.concatenate(ys), np.concatenate(ps)), abs=1e-12)
    third = store.checkpoint()  # nothing new since the restart: a manifest alone
    assert not (folder / f"chunks-{third:012d}.pt").exists()
    store.close()
    store = open_store(tmp_path)
    assert auc_of(store) == (samples, auc)
    store.close()


def test_unrecoverable_checkpoints_refuse_to_start(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    for i in range(3):
        p, y = data(60 + i)
        store.ingest(make_batch(preds=p, labels=y, seq=i + 1))
        store.checkpoint()  # the log before the kept checkpoints is dropped
    store.close()
    for f in (tmp_path / "checkpoints").glob("chunks-*.pt"):  # bit rot in every chunk file
        raw = bytearray(f.read_bytes())
        raw[len(raw) // 2] ^= 0xFF
        f.write_bytes(bytes(raw))
    with pytest.raises(StateLost, match="restore the checkpoints folder"):
        open_store(tmp_path)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "rankboard.service.cli",
            "serve",
            "--grpc-port",
            "0",
            "--http-port",
            "0",
            "--data-dir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and "cannot start" in proc.stderr


def test_interval_policy_syncs_in_the_background(tmp_path: Path, monkeypatch) -> None:
    """``--fsync interval``: what was written is synced within an interval, with no later
    append to trigger it (a quiet service must not keep its last batches unsynced)."""
    import time

    synced: list[int] = []
    real = wal_module.os.fdatasync
    monkeypatch.setattr(wal_module.os, "fdatasync", lambda fd: (synced.append(fd), real(fd)))
    wal = WriteAheadLog(tmp_path, fsync="interval", interval_s=0.02)
    lsn = wal.append(RECORD_BATCH, b"last one")
    deadline = time.monotonic() + 30
    while wal._synced < lsn and time.monotonic() < deadline:
        time.sleep(0.01)
    assert wal._synced == lsn and synced
    calls = len(synced)
    time.sleep(0.1)
    assert len(synced) == calls  # nothing new written: no more syncs
    wal.close()
    assert [p for _, _, p in WriteAheadLog(tmp_path).replay(0)] == [b"last one"]


def test_registry_history_answers_after_restart(tmp_path: Path) -> None:
    """Train history lives in SQLite: after the log that produced it is dropped by
    checkpoints and the service restarts, it is still there, point for point."""
    from rankboard.protos import ingest_pb2, metric_pb2, parse_text
    from rankboard.service.state import query

    decl = [
        parse_text(
            "auc { thresholds: 100 } decay_rate: 0.5 decay_step: 1", metric_pb2.TrainMetricConfig()
        )
    ]
    key = RunKey("exp", "control", "ctr", "train")
    store = open_store(tmp_path)
    for i in range(4):
        p, y = data(70 + i)
        store.ingest(
            make_batch(
                preds=p,
                labels=y,
                seq=i + 1,
                step=10 * (i + 1),
                phase=ingest_pb2.PHASE_TRAIN,
                train_metrics=decl if i == 0 else None,
            )
        )
        store.checkpoint()
    before = query.history(store, key, "auc")
    before = [(p["step"], p["value"]) for p in before]
    assert [s for s, _ in before] == [10, 20, 30, 40]
    first_kept = int(sorted((tmp_path / "checkpoints").glob("ckpt-*.pt"))[0].stem[5:])
    assert min(int(s.stem) for s in (tmp_path / "wal").glob("*.wal")) == first_kept > 1
    store.close()
    store = open_store(tmp_path)
    assert [(p["step"], p["value"]) for p in query.history(store, key, "auc")] == before
    assert store.registry.runs()[0][:4] == ("exp", "control", "ctr", "train")
    store.close()


def test_expiry_tolerates_a_concurrent_delete(tmp_path: Path, monkeypatch) -> None:
    """An experiment deleted over REST while the TTL sweep runs: no error, the checkpointer
    thread (which runs the sweep) lives on."""
    store = MetricStore(StoreConfig(data_dir=tmp_path, ttl_s=60))
    p, y = data(80)
    store.ingest(make_batch(preds=p, labels=y, experiment="old", seq=1))
    store.run(RunKey("old", "control", "ctr", "eval")).updated_at -= 120
    real = store.delete_experiment

    def raced(experiment: str) -> int:
        real(experiment)  # the REST delete got there first
        return real(experiment)

    monkeypatch.setattr(store, "delete_experiment", raced)
    assert store.expire(mono_now=time.monotonic() + 120) == []
    assert store.runs() == []
    assert store.checkpointer.is_alive()
    store.close()
