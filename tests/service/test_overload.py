"""Overload: over the concurrent-call limit the service answers RESOURCE_EXHAUSTED, the
client backs off and retries, and nothing accepted is dropped."""

from __future__ import annotations

import queue
import threading

import grpc
import httpx
import numpy as np
import pytest

from rankboard.protos import ingest_pb2_grpc
from rankboard.trainer.client import MetricsStream
from tests.helpers import make_batch


def test_resource_exhausted_then_client_retries(service_factory) -> None:
    svc = service_factory(max_concurrent_rpcs=1)
    hold: queue.Queue = queue.Queue()
    ch = grpc.insecure_channel(svc.grpc_target)
    stub = ingest_pb2_grpc.IngestStub(ch)
    p = np.array([0.2, 0.7, 0.4, 0.9], np.float32)
    y = np.array([0, 1, 0, 1], np.float32)
    hold.put(make_batch(preds=p, labels=y, producer="holder", seq=1))

    def requests():
        while (item := hold.get()) is not None:
            yield item

    held = stub.Stream(requests())
    assert next(held).error_code == 0  # the one allowed call is open
    with grpc.insecure_channel(svc.grpc_target) as ch2, pytest.raises(grpc.RpcError) as err:
        ingest_pb2_grpc.IngestStub(ch2).Send(make_batch(preds=p, labels=y, producer="x"))
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED

    # a client that meets the limit backs off and gets through once the call closes
    stream = MetricsStream(
        svc.grpc_target,
        experiment="exp",
        arm="control",
        producer_id="c",
        backoff_initial=0.05,
        backoff_max=0.2,
    )
    stream.log(p, y, task="ctr", phase="eval", step=1)
    releaser = threading.Timer(0.5, lambda: hold.put(None))
    releaser.start()
    stream.flush(timeout=30)
    stream.close()
    assert stream.stats.reconnects >= 1
    list(held)
    ch.close()
    body = httpx.get(
        f"{svc.http_url}/v1/experiments/exp/arms/control/metrics",
        params={"task": "ctr", "fresh": "true"},
    ).json()
    assert body["samples"] == 8


def test_drain_ends_idle_streams_and_refuses_new_ones(service_factory) -> None:
    import time

    svc = service_factory(drain_timeout_s=30)
    hold: queue.Queue = queue.Queue()
    p = np.array([0.2, 0.7], np.float32)
    y = np.array([0, 1], np.float32)
    hold.put(make_batch(preds=p, labels=y, producer="idle", seq=1))

    def requests():
        while (item := hold.get()) is not None:
            yield item

    with grpc.insecure_channel(svc.grpc_target) as ch:
        call = ingest_pb2_grpc.IngestStub(ch).Stream(requests())
        assert next(call).error_code == 0  # acked, then the producer goes idle
        start = time.monotonic()
        svc.stop()
        # the idle stream was ended by the drain, well before the 30 s grace ran out
        assert time.monotonic() - start < 15
        assert list(call) == []
        hold.put(None)
