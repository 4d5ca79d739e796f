"""Kill the service with SIGKILL at random moments while producers stream; nothing is
lost and nothing is counted twice: every REST snapshot equals an uninterrupted run's.

Each run is fed by one producer, so the arrival order within a run is the same in
both services and float sums agree bit for bit: the comparison is exact.
"""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path

import grpc
import httpx
import numpy as np

from rankboard.protos import ingest_pb2, ingest_pb2_grpc
from tests.helpers import ServiceProcess, make_batch

STREAMS = [  # (producer, arm, phase)
    ("p-control-eval", "control", ingest_pb2.PHASE_EVAL),
    ("p-treatment-eval", "treatment", ingest_pb2.PHASE_EVAL),
    ("p-control-train", "control", ingest_pb2.PHASE_TRAIN),
    ("p-treatment-train", "treatment", ingest_pb2.PHASE_TRAIN),
]
BATCHES, N = 60, 400


def dataset(producer_index: int) -> list[ingest_pb2.Batch]:
    name, arm, phase = STREAMS[producer_index]
    rng = np.random.default_rng(producer_index)
    out = []
    for i in range(BATCHES):
        y = (rng.random(N) < 0.3).astype(np.float32)
        p = np.round(np.clip(0.25 * y + 0.75 * rng.random(N), 0, 1), 3).astype(np.float32)
        g = rng.integers(0, 40, N)
        step = 100 * (1 + i // 20) if phase == ingest_pb2.PHASE_EVAL else 10 * (i + 1)
        out.append(
            make_batch(
                preds=p,
                labels=y,
                keys={"user_id": g},
                producer=name,
                seq=i + 1,
                arm=arm,
                phase=phase,
                step=step,
            )
        )
    return out


def paced(batches: list[ingest_pb2.Batch]):
    """Yield batches 40 ms apart, so that the kills land in the middle of the streams."""
    for msg in batches:
        yield msg
        time.sleep(0.04)


def stream_with_retries(
    target: str, batches: list[ingest_pb2.Batch], stop: threading.Event
) -> None:
    """A minimal idempotent producer: re-send everything unacknowledged after an error."""
    acked = 0
    while acked < len(batches) and not stop.is_set():
        try:
            with grpc.insecure_channel(target) as ch:
                stub = ingest_pb2_grpc.IngestStub(ch)
                for ack in stub.Stream(paced(batches[acked:]), timeout=30):
                    assert ack.error_code == 0, ack.error_message
                    assert ack.sequence == batches[acked].sequence
                    acked += 1
        except grpc.RpcError:
            time.sleep(0.05)


def snapshots(base: str) -> dict:
    out = {}
    with httpx.Client(base_url=base, timeout=60) as http:
        exp = http.get("/v1/experiments/exp").json()
        for run in exp["runs"]:
            steps = run["steps"] or [None]
            for step in steps:
                params = {"task": run["task"], "phase": run["phase"], "fresh": "true"}
                if step is not None:
                    params["step"] = step
                body = http.get(
                    f"/v1/experiments/exp/arms/{run['arm']}/metrics", params=params
                ).json()
                out[(run["arm"], run["phase"], step)] = (body["samples"], body["metrics"])
            if run["phase"] == "train":
                hist = http.get(
                    f"/v1/experiments/exp/arms/{run['arm']}/history",
                    params={"task": "ctr", "phase": "train", "metric": "auc"},
                ).json()
                out[(run["arm"], "train-history")] = hist["points"]
    return out


def test_sigkill_at_random_moments_loses_nothing(tmp_path: Path, service_factory) -> None:
    data = [dataset(i) for i in range(len(STREAMS))]

    # the uninterrupted reference
    ref = service_factory(tmp_path / "ref")
    with grpc.insecure_channel(ref.grpc_target) as ch:
        stub = ingest_pb2_grpc.IngestStub(ch)
        for batches in data:
            assert all(a.error_code == 0 for a in stub.Stream(iter(batches)))
    expected = snapshots(ref.http_url)

    svc = ServiceProcess(tmp_path / "crash")
    svc.start()
    stop = threading.Event()
    target = f"127.0.0.1:{svc.gport}"
    threads = [threading.Thread(target=stream_with_retries, args=(target, b, stop)) for b in data]
    rng = np.random.default_rng(2024)
    for t in threads:
        t.start()
    kills_mid_stream = 0
    for _ in range(3):
        time.sleep(float(rng.uniform(0.3, 0.9)))
        kills_mid_stream += any(t.is_alive() for t in threads)
        svc.kill()
        svc.start()
    for t in threads:
        t.join(timeout=120)
    stop.set()
    assert not any(t.is_alive() for t in threads)
    assert kills_mid_stream == 3
    got = snapshots(f"http://127.0.0.1:{svc.hport}")
    assert svc.stop() == 0
    assert got == expected
    # and once more after a clean restart from disk
    svc.start()
    assert snapshots(f"http://127.0.0.1:{svc.hport}") == expected
    assert svc.stop() == 0


def test_sigterm_drains_a_busy_stream_and_exits_0(tmp_path: Path) -> None:
    """SIGTERM while a producer streams: the process exits 0 within the drain bound, every
    acknowledged batch survives, and a re-send of everything counts nothing twice."""
    batches = dataset(0)
    svc = ServiceProcess(tmp_path / "d", args=("--drain-timeout", "2"))
    svc.start()
    target = f"127.0.0.1:{svc.gport}"
    acked: list[int] = []
    first_ack = threading.Event()
    ended: list[grpc.StatusCode | None] = []

    def produce() -> None:
        try:
            with grpc.insecure_channel(target) as ch:
                for ack in ingest_pb2_grpc.IngestStub(ch).Stream(paced(batches), timeout=60):
                    assert ack.error_code == 0, ack.error_message
                    acked.append(ack.sequence)
                    first_ack.set()
            ended.append(None)
        except grpc.RpcError as err:
            ended.append(err.code())

    producer = threading.Thread(target=produce)
    producer.start()
    assert first_ack.wait(60)
    svc.proc.send_signal(signal.SIGTERM)
    assert svc.proc.wait(timeout=60) == 0  # bounded: 2 s of grace plus the shutdown
    producer.join(timeout=60)
    assert not producer.is_alive() and ended
    assert acked == list(range(1, len(acked) + 1))

    svc.start()  # every acknowledged batch is there after the restart
    url = f"http://127.0.0.1:{svc.hport}/v1/experiments/exp"
    assert httpx.get(url).json()["samples"] >= len(acked) * N
    with grpc.insecure_channel(target) as ch:
        acks = list(ingest_pb2_grpc.IngestStub(ch).Stream(iter(batches)))
    assert all(a.error_code == 0 for a in acks)
    assert all(a.duplicate for a in acks[: len(acked)])
    assert httpx.get(url).json()["samples"] == len(batches) * N
    assert svc.stop() == 0
