"""Many producers: open Ingest streams hold no thread while idle (grpc.aio), so 512 of
them stay connected while every producer's batches are acked and the health check
answers; over ``max_streams`` a new stream is refused at once with RESOURCE_EXHAUSTED.

Before the move to grpc.aio, each open stream held one of 32 worker threads for its
whole life: with 32 idle streams open a 33rd producer and the health check hung.
"""

from __future__ import annotations

import asyncio
import time

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from sklearn.metrics import roc_auc_score

from rankboard.protos import ingest_pb2, ingest_pb2_grpc
from rankboard.service.state.batch import RunKey
from tests.helpers import make_batch

STREAMS = 512
ACTIVE_BATCHES = 3  # every other producer sends this many batches; the rest send one
N = 16


def producer_batches(i: int) -> list[ingest_pb2.Batch]:
    rng = np.random.default_rng(i)
    out = []
    for seq in range(1, (ACTIVE_BATCHES if i % 2 else 1) + 1):
        y = (rng.random(N) < 0.4).astype(np.float32)
        p = np.round(0.3 * y + 0.7 * rng.random(N), 3).astype(np.float32)
        out.append(make_batch(preds=p, labels=y, producer=f"rank-{i}", seq=seq))
    return out


async def hold_streams(target: str) -> tuple[list[list[ingest_pb2.Ack]], float, int]:
    """Open STREAMS streams over 4 channels, send every producer's batches, wait for their
    acks, then (all still open, idle) time a health check and a new producer's Send."""
    channels = [grpc.aio.insecure_channel(target) for _ in range(4)]
    release = asyncio.Event()
    acked: list[list[ingest_pb2.Ack]] = [[] for _ in range(STREAMS)]
    all_acked = asyncio.Event()
    done_count = 0

    async def producer(i: int) -> None:
        nonlocal done_count
        batches = producer_batches(i)

        async def requests():
            for b in batches:
                yield b
            await release.wait()  # idle, stream open

        call = ingest_pb2_grpc.IngestStub(channels[i % 4]).Stream(requests())
        async for ack in call:
            acked[i].append(ack)
            if len(acked[i]) == len(batches):
                done_count += 1
                if done_count == STREAMS:
                    all_acked.set()

    async def health() -> float:
        started = time.monotonic()
        status = await health_pb2_grpc.HealthStub(channels[0]).Check(
            health_pb2.HealthCheckRequest(service=""), timeout=5
        )
        assert status.status == health_pb2.HealthCheckResponse.SERVING
        return time.monotonic() - started

    tasks = [asyncio.create_task(producer(i)) for i in range(STREAMS)]
    await asyncio.sleep(0.2)  # streams opening and sending
    busy_s = await health()
    await asyncio.wait_for(all_acked.wait(), timeout=120)
    health_s = max(busy_s, await health())  # while active, then with all of them idle
    extra = producer_batches(STREAMS)[0]
    ack = await ingest_pb2_grpc.IngestStub(channels[1]).Send(extra, timeout=5)
    release.set()
    await asyncio.wait_for(asyncio.gather(*tasks), timeout=60)
    for ch in channels:
        await ch.close()
    return acked, health_s, ack.error_code


def test_512_producer_streams_are_acked_and_health_answers(service_factory) -> None:
    svc = service_factory()
    acked, health_s, extra_code = asyncio.run(hold_streams(svc.grpc_target))
    assert health_s < 1.0  # functional, generous: it hung for 5 s with 32 idle streams
    assert extra_code == 0
    for i, acks in enumerate(acked):
        expected = producer_batches(i)
        assert [(a.producer_id, a.sequence, a.error_code) for a in acks] == [
            (f"rank-{i}", b.sequence, 0) for b in expected
        ]  # every batch acked, in order
    batches = [
        b for i in range(STREAMS + 1) for b in producer_batches(i)[: 1 if i == STREAMS else None]
    ]
    p = np.concatenate([np.frombuffer(b.predictions.data, np.float32) for b in batches])
    y = np.concatenate([np.frombuffer(b.labels.data, np.float32) for b in batches])
    snap, _ = svc.store.snapshot(RunKey("exp", "control", "ctr", "eval"), fresh=True)
    assert snap.samples == len(y)
    assert snap.metrics["auc"] == pytest.approx(roc_auc_score(y, p), abs=1e-12)


async def over_the_limit(target: str, limit: int) -> tuple[grpc.StatusCode, float]:
    async with grpc.aio.insecure_channel(target) as ch:
        stub = ingest_pb2_grpc.IngestStub(ch)
        release = asyncio.Event()

        async def idle():
            yield producer_batches(0)[0]
            await release.wait()

        calls = [stub.Stream(idle()) for _ in range(limit)]
        for call in calls:  # all open and acked
            assert (await call.read()).error_code == 0
        started = time.monotonic()
        # the late producer is a sync client, as the trainer's (an aio client that writes
        # its first batch after the refusal reports its own INTERNAL send failure instead)
        code, message = await asyncio.to_thread(sync_stream, target)
        refused_s = time.monotonic() - started
        assert "--max-streams" in message
        release.set()
        for call in calls:
            assert await call.code() == grpc.StatusCode.OK

        # once the others closed, a new stream is taken again
        async def one():
            yield producer_batches(1)[0]

        assert [a.error_code async for a in stub.Stream(one())] == [0]
    return code, refused_s


def sync_stream(target: str) -> tuple[grpc.StatusCode, str]:
    with grpc.insecure_channel(target) as ch:
        try:
            list(ingest_pb2_grpc.IngestStub(ch).Stream(iter(producer_batches(2)), timeout=30))
        except grpc.RpcError as err:
            return err.code(), err.details()
    return grpc.StatusCode.OK, ""


def test_streams_over_max_streams_are_refused_at_once(service_factory) -> None:
    svc = service_factory(max_streams=8)
    code, refused_s = asyncio.run(over_the_limit(svc.grpc_target, 8))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert refused_s < 5  # at once, never a hang (generous for a loaded machine)
