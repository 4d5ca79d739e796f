"""Where the gRPC front end applies a batch: on the event loop when the batch is small
and the store is free, on an ingest thread otherwise, and never by making the loop wait
for the store's lock (health checks and other calls keep being answered)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import grpc
import httpx
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

from rankboard.protos import ingest_pb2, ingest_pb2_grpc
from rankboard.service import grpc_api
from rankboard.service.server import ServiceConfig, run_service
from rankboard.service.state.store import StoreConfig
from tests.helpers import make_batch


def batch(seq: int, n: int) -> ingest_pb2.Batch:
    rng = np.random.default_rng(seq)
    return make_batch(
        preds=rng.random(n).astype(np.float32),
        labels=(rng.random(n) < 0.3).astype(np.float32),
        seq=seq,
        keys={"user_id": rng.integers(0, 100, n)},
    )


def samples(url: str) -> int:
    body = httpx.get(f"{url}/v1/experiments/exp/arms/control/metrics?task=ctr&phase=eval").json()
    return int(body["samples"])


def test_a_batch_sent_while_the_store_is_locked_waits_on_a_thread(tmp_path: Path) -> None:
    small, large = batch(1, 1000), batch(2, 200_000)
    assert len(small.SerializeToString()) <= grpc_api.INLINE_MAX_BYTES
    assert len(large.SerializeToString()) > grpc_api.INLINE_MAX_BYTES
    config = ServiceConfig(
        data_dir=tmp_path, device="cpu", store=StoreConfig(checkpoint_interval_s=3600)
    )
    with run_service(config) as svc, grpc.insecure_channel(svc.grpc_target) as channel:
        stub = ingest_pb2_grpc.IngestStub(channel)
        health = health_pb2_grpc.HealthStub(channel)
        store_lock = svc.store._lock  # what a checkpoint or a delete holds for a while
        acks: list[ingest_pb2.Ack] = []
        with store_lock:
            sender = threading.Thread(target=lambda: acks.extend(stub.Stream(iter([small, large]))))
            sender.start()
            time.sleep(0.5)  # the small batch reached the servicer and found the lock held
            started = time.perf_counter()
            reply = health.Check(health_pb2.HealthCheckRequest(), timeout=5)
            answered = time.perf_counter() - started
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
            assert answered < 1.0, f"the event loop waited for the store: {answered:.2f} s"
            assert not acks  # nothing applied while the lock is held
        sender.join(timeout=30)
        assert [(a.sequence, a.error_code, a.samples) for a in acks] == [
            (1, 0, 1000),
            (2, 0, 200_000),
        ]
        assert samples(svc.http_url) == 201_000
        # with the lock free, small batches apply on the loop: same outcome
        third = batch(3, 500)
        (ack,) = list(stub.Stream(iter([third])))
        assert (ack.sequence, ack.error_code, ack.samples) == (3, 0, 500)
        assert samples(svc.http_url) == 201_500
