"""An ack is never sent before its batch is durable in the write-ahead log.

A real server on loopback, ``--fsync batch``, with a slow disk: ``os.fdatasync`` takes
5 ms more (a wrapper around the real call). The wrapper notes, when each sync returns,
how many bytes of the log file it covered (the file's size before the call). After the
stream, the test reads the log file itself (record framing ``[u32 length][u32 crc]
[u8 kind][payload]``, parsed here) to find where each batch's record ends. Every ack
must have reached the client after a sync that covered its batch's record.
"""

from __future__ import annotations

import os
import struct
import threading
import time
from pathlib import Path

import grpc
import numpy as np

from rankboard.protos import ingest_pb2, ingest_pb2_grpc
from rankboard.protos.wire import encode_batch
from rankboard.service.server import ServiceConfig, run_service
from rankboard.service.state import wal as wal_module
from rankboard.service.state.store import StoreConfig

HEADER = struct.Struct("<IIB")


def batches(count: int, n: int = 2048) -> list[ingest_pb2.Batch]:
    rng = np.random.default_rng(3)
    out = []
    for seq in range(1, count + 1):
        y = (rng.random(n) < 0.3).astype(np.float32)
        p = rng.random(n).astype(np.float32)
        msg = encode_batch(
            producer_id="slow-disk",
            sequence=seq,
            experiment="e",
            arm="a",
            task="ctr",
            phase="eval",
            step=1,
            predictions=p,
            labels=y,
            grouping_keys={"user_id": rng.integers(0, 500, n)},
        )
        out.append(msg)
    return out


def record_ends(segment: Path) -> dict[int, int]:
    """Sequence of each batch record in ``segment`` -> the file offset where it ends."""
    data = segment.read_bytes()
    ends, pos = {}, 0
    while pos + HEADER.size <= len(data):
        length, _, kind = HEADER.unpack_from(data, pos)
        end = pos + HEADER.size + length
        assert end <= len(data)
        if kind == 1:
            ends[ingest_pb2.Batch.FromString(data[pos + HEADER.size : end]).sequence] = end
        pos = end
    return ends


def test_ack_arrives_only_after_its_record_is_synced(tmp_path: Path, monkeypatch) -> None:
    real = os.fdatasync
    synced: list[tuple[float, int]] = []  # (when the sync returned, log bytes it covered)
    lock = threading.Lock()

    def slow_fdatasync(fd: int) -> None:
        covered = os.fstat(fd).st_size
        real(fd)
        time.sleep(0.005)
        done = time.perf_counter()
        if os.readlink(f"/proc/self/fd/{fd}").endswith(".wal"):
            with lock:
                synced.append((done, covered))

    monkeypatch.setattr(wal_module.os, "fdatasync", slow_fdatasync)
    msgs = batches(60)
    acked: dict[int, float] = {}
    config = ServiceConfig(
        data_dir=tmp_path,
        device="cpu",
        fsync="batch",
        store=StoreConfig(checkpoint_interval_s=3600),
    )
    with run_service(config) as svc, grpc.insecure_channel(svc.grpc_target) as channel:
        for ack in ingest_pb2_grpc.IngestStub(channel).Stream(iter(msgs)):
            acked[ack.sequence] = time.perf_counter()
            assert not ack.error_code and ack.samples == 2048
    monkeypatch.undo()

    segments = sorted((tmp_path / "wal").glob("*.wal"))
    assert len(segments) == 1  # a fresh log, no checkpoint: offsets are log positions
    ends = record_ends(segments[0])
    assert sorted(acked) == sorted(ends) == list(range(1, 61))
    # batches were pipelined: syncs were shared (group commit), so acks had to wait
    assert len(synced) < len(msgs)
    for seq, when in acked.items():
        durable_at = min((t for t, covered in synced if covered >= ends[seq]), default=None)
        assert durable_at is not None, f"batch {seq} acknowledged, its record never synced"
        assert durable_at <= when, f"batch {seq} acknowledged {durable_at - when:.4f} s early"
