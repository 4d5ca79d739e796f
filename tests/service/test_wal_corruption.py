"""Write-ahead log corruption: only the last segment's torn tail is cut by itself; any
other bad byte stops the start with an error naming segment, offset and the batches;
``rankboard repair`` cuts explicitly and the lost batches can be re-sent.

Each scenario is one the fault injection of issue 15 found losing acknowledged batches.
"""

from __future__ import annotations

import errno
import subprocess
import sys
from pathlib import Path

import grpc
import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from rankboard.protos import ingest_pb2, ingest_pb2_grpc
from rankboard.service.cli import main as rankboard_main
from rankboard.service.state import checkpoint as checkpoint_module
from rankboard.service.state.batch import RunKey
from rankboard.service.state.store import MetricStore, StateLost, StoreConfig
from rankboard.service.state.wal import LogCorrupt, WriteAheadLog
from tests.helpers import make_batch

KEY = RunKey("exp", "control", "ctr", "eval")
N = 200


def batch(seq: int, producer: str = "p0") -> ingest_pb2.Batch:
    rng = np.random.default_rng(seq * 1000 + len(producer))
    y = (rng.random(N) < 0.4).astype(np.float32)
    p = np.round(0.3 * y + 0.7 * rng.random(N), 3).astype(np.float32)
    return make_batch(preds=p, labels=y, seq=seq, producer=producer)


def expected(batches: list[ingest_pb2.Batch]) -> tuple[int, float]:
    """Samples and AUC of ``batches``, by sklearn from the arrays themselves."""
    p = np.concatenate([np.frombuffer(b.predictions.data, np.float32) for b in batches])
    y = np.concatenate([np.frombuffer(b.labels.data, np.float32) for b in batches])
    return len(y), float(roc_auc_score(y, p))


def open_store(path: Path) -> MetricStore:
    return MetricStore(StoreConfig(data_dir=path, checkpoint_interval_s=3600))


def state_of(store: MetricStore) -> tuple[int, float]:
    snap, _ = store.snapshot(KEY, fresh=True)
    return snap.samples, snap.metrics["auc"]


def segment(path: Path, index: int) -> Path:
    return path / "wal" / f"{index:012d}.wal"


def record_offsets(seg: Path) -> list[int]:
    """Start offsets of the records of a segment, from the framing written in the test."""
    raw, out, pos = seg.read_bytes(), [], 0
    while pos < len(raw):
        out.append(pos)
        pos += 9 + int.from_bytes(raw[pos : pos + 4], "little")
    return out


def flip(path: Path, offset: int) -> None:
    raw = bytearray(path.read_bytes())
    raw[offset] ^= 0xFF
    path.write_bytes(bytes(raw))


def build_three_segments(path: Path) -> list[ingest_pb2.Batch]:
    """Batches 1-4 in segment 0, 5-8 in segment 1 (checkpoint 1), 9-12 in segment 2
    (checkpoint 2); checkpoint 2's manifest then rots, so a start needs segment 1."""
    store = open_store(path)
    sent = []
    for seq in range(1, 13):
        sent.append(batch(seq))
        store.ingest(sent[-1])
        if seq in (4, 8):
            store.checkpoint()
    store.close()
    flip(path / "checkpoints" / f"ckpt-{2:012d}.pt", 40)
    return sent


def test_a_bad_record_in_a_middle_segment_stops_the_start_and_repair_is_explicit(
    tmp_path: Path, service_factory, capsys
) -> None:
    data = tmp_path / "data"
    sent = build_three_segments(data)
    seg1 = segment(data, 1)
    offsets = record_offsets(seg1)
    assert len(offsets) == 4  # batches 5..8
    flip(seg1, offsets[1] + 200)  # inside batch 6's predictions

    # a real `rankboard serve` refuses to start, naming segment, offset and batches
    serve = ["serve", "--grpc-port", "0", "--http-port", "0", "--device", "cpu"]
    proc = subprocess.run(
        [sys.executable, "-m", "rankboard.service.cli", *serve, "--data-dir", str(data)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    assert f"segment {1:012d}.wal, offset {offsets[1]}" in proc.stderr
    assert "'p0' 7-12" in proc.stderr  # 7, 8 after it in segment 1; 9-12 in segment 2
    assert "batch 6 of producer 'p0'" in proc.stderr  # the damaged one, read unchecked
    with pytest.raises(LogCorrupt) as err:
        open_store(data)
    assert (err.value.segment, err.value.offset) == (1, offsets[1])
    assert err.value.lost == [("p0", s) for s in range(7, 13)]
    assert err.value.damaged == ("p0", 6)
    size_before = seg1.stat().st_size

    # dry run: reports, changes nothing, exit 1
    assert rankboard_main(["repair", "--data-dir", str(data), "--dry-run"]) == 1
    out = capsys.readouterr().out
    assert "'p0' 7-12" in out and "'p0' 5" in out  # lost; last sequence kept
    assert seg1.stat().st_size == size_before and segment(data, 2).exists()

    assert rankboard_main(["repair", "--data-dir", str(data)]) == 0
    assert seg1.stat().st_size == offsets[1] and not segment(data, 2).exists()
    (lost_dir,) = (data / "lost").iterdir()
    assert (lost_dir / f"{2:012d}.wal").exists()  # moved aside, never deleted
    assert (lost_dir / f"{1:012d}.wal.from-{offsets[1]}").stat().st_size == (
        size_before - offsets[1]
    )
    assert rankboard_main(["repair", "--data-dir", str(data), "--dry-run"]) == 0

    # the service starts with exactly batches 1-5 and takes the lost ones when re-sent
    svc = service_factory(data)
    with grpc.insecure_channel(svc.grpc_target) as ch:
        stub = ingest_pb2_grpc.IngestStub(ch)
        samples, auc = expected(sent[:5])
        assert state_of(svc.store) == (samples, pytest.approx(auc, abs=1e-12))
        assert stub.Send(sent[4]).duplicate  # kept: still exactly once
        acks = [stub.Send(b) for b in sent[5:]]
        assert [(a.error_code, a.duplicate) for a in acks] == [(0, False)] * 7
    samples, auc = expected(sent)
    assert state_of(svc.store) == (samples, pytest.approx(auc, abs=1e-12))


def test_a_bad_first_record_of_the_last_segment_is_not_a_torn_tail(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    sent = [batch(s) for s in range(1, 5)]
    for b in sent:
        store.ingest(b)
    store.close()
    seg0 = segment(tmp_path, 0)
    size = seg0.stat().st_size
    flip(seg0, 20)  # the first record; three valid acknowledged ones follow
    with pytest.raises(LogCorrupt, match=r"offset 0: a bad record with a valid one after it"):
        open_store(tmp_path)
    assert seg0.stat().st_size == size  # nothing was cut
    flip(seg0, 20)  # the bit rot was fixed (from a backup): everything is there
    store = open_store(tmp_path)
    assert state_of(store) == (expected(sent)[0], pytest.approx(expected(sent)[1], abs=1e-12))
    store.close()


def test_a_torn_tail_in_the_last_segment_is_still_cut(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    sent = [batch(s) for s in range(1, 4)]
    for b in sent:
        store.ingest(b)
    store.close()
    seg0 = segment(tmp_path, 0)
    last = record_offsets(seg0)[-1]
    with open(seg0, "r+b") as f:  # the crash interrupted the last write
        f.truncate(last + 50)
    store = open_store(tmp_path)
    assert seg0.stat().st_size == last
    assert state_of(store) == (expected(sent[:2])[0], pytest.approx(expected(sent[:2])[1]))
    assert not store.ingest(sent[2]).duplicate  # never acknowledged: it applies when re-sent
    store.close()


def test_replay_never_crosses_a_missing_segment(tmp_path: Path) -> None:
    sent = build_three_segments(tmp_path)
    segment(tmp_path, 1).unlink()  # lost by an operator's mistake
    with pytest.raises(LogCorrupt, match=r"segment 000000000001.wal is missing") as err:
        open_store(tmp_path)
    assert err.value.lost == [("p0", s) for s in range(9, 13)]
    assert rankboard_main(["repair", "--data-dir", str(tmp_path)]) == 0
    store = open_store(tmp_path)  # checkpoint 1: batches 1-4, and nothing after the gap
    assert state_of(store) == (expected(sent[:4])[0], pytest.approx(expected(sent[:4])[1]))
    assert not store.ingest(sent[4]).duplicate
    store.close()


def test_a_crash_between_rotation_and_manifest_loses_nothing(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    sent = [batch(s) for s in range(1, 9)]
    for b in sent[:4]:
        store.ingest(b)
    store.checkpoint()
    for b in sent[4:]:
        store.ingest(b)
    store._wal.rotate()  # what checkpoint() does first; the process dies before the manifest
    store.ingest(batch(9))
    sent.append(batch(9))
    store.close()
    assert not (tmp_path / "checkpoints" / f"ckpt-{2:012d}.pt").exists()
    store = open_store(tmp_path)
    assert state_of(store) == (expected(sent)[0], pytest.approx(expected(sent)[1], abs=1e-12))
    store.close()


def test_disk_full_during_a_checkpoint_keeps_the_log_it_needs(tmp_path: Path, monkeypatch) -> None:
    store = open_store(tmp_path)
    sent = [batch(s) for s in range(1, 13)]
    for seq, b in enumerate(sent, 1):
        store.ingest(b)
        if seq in (3, 6):
            store.checkpoint()
    real = checkpoint_module._CrcWriter.write

    def full(self: object, data: bytes) -> int:  # the manifest's first write fills the disk
        real(self, data[: len(data) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint_module._CrcWriter, "write", full)
    with pytest.raises(OSError, match="No space"):
        store.checkpoint()
    monkeypatch.undo()
    assert not list((tmp_path / "checkpoints").glob("*.tmp"))
    store.close()
    # and then the newest good checkpoint rots: the older one and the log still hold all
    flip(tmp_path / "checkpoints" / f"ckpt-{2:012d}.pt", 40)
    store = open_store(tmp_path)
    assert state_of(store) == (expected(sent)[0], pytest.approx(expected(sent)[1], abs=1e-12))
    store.close()


def test_unreadable_new_checkpoints_never_drop_the_last_good_one(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    sent = []
    for seq in range(1, 13):
        sent.append(batch(seq))
        store.ingest(sent[-1])
        if seq % 3 == 0:
            index = store.checkpoint()
            if seq > 3:  # every checkpoint after the first rots as soon as it is written
                flip(tmp_path / "checkpoints" / f"ckpt-{index:012d}.pt", 40)
    store.close()
    assert (tmp_path / "checkpoints" / f"ckpt-{1:012d}.pt").exists()
    assert segment(tmp_path, 1).exists()  # the log from the last good checkpoint
    store = open_store(tmp_path)
    assert state_of(store) == (expected(sent)[0], pytest.approx(expected(sent)[1], abs=1e-12))
    store.close()


def test_repair_of_a_dir_that_cannot_be_recovered_exits_2(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    for seq in range(1, 10):
        store.ingest(batch(seq))
        if seq % 3 == 0:
            store.checkpoint()
    store.close()
    for f in (tmp_path / "checkpoints").glob("ckpt-*.pt"):
        flip(f, 40)
    with pytest.raises(StateLost):
        open_store(tmp_path)
    assert rankboard_main(["repair", "--data-dir", str(tmp_path)]) == 2


FULL_DISK = """
import resource, signal, sys
from rankboard.service.state.wal import RECORD_BATCH, WriteAheadLog
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG
wal = WriteAheadLog(sys.argv[1])
wal.append(RECORD_BATCH, b"a" * 1000)
_, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
resource.setrlimit(resource.RLIMIT_FSIZE, (wal.current_bytes + 5000, hard))  # the disk fills
try:
    wal.append(RECORD_BATCH, b"b" * 100_000)
    print("no error")
except OSError as err:
    print("refused", err.errno)
resource.setrlimit(resource.RLIMIT_FSIZE, (hard, hard))  # room again
wal.append(RECORD_BATCH, b"c" * 1000)
wal.close()
"""


def test_a_failed_append_leaves_no_garbage_before_later_records(tmp_path: Path) -> None:
    """A write that fails half way (disk full: a real EFBIG from the file size limit)
    must not leave a partial record for the next, acknowledged ones to follow."""
    proc = subprocess.run(
        [sys.executable, "-c", FULL_DISK, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["refused", str(errno.EFBIG)]
    assert [p[:1] for _, _, p in WriteAheadLog(tmp_path).replay(0)] == [b"a", b"c"]
