"""MetricsStream against a small stand-in Ingest servicer on a real loopback gRPC server.

The stand-in implements the ingestion contract of ``protos/ingest.proto`` (per
producer idempotency by sequence, one ack per batch, rejections with an error
code) with its applied state kept outside the server object, so that a test can
stop the server and start another on the same port with the same "durable"
state, as the real service does with its write-ahead log. Client-only
behaviours (batching, backpressure, reconnect, re-send, auth, rejections) are
checked here; tests/trainer/test_client_service.py runs against the real service.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass, field

import grpc
import numpy as np
import pytest
import torch

from rankboard.protos import ingest_pb2, ingest_pb2_grpc, metric_pb2
from rankboard.trainer.client import (
    FlushTimeout,
    MetricsStream,
    MetricsStreamError,
    RejectedBatchesError,
    parse_metrics,
)


@dataclass
class Store:
    """The stand-in's durable state: survives a server restart."""

    last_seq: dict[str, int] = field(default_factory=dict)
    samples: int = 0
    batches: list[ingest_pb2.Batch] = field(default_factory=list)
    received: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)
    # behaviour knobs
    gate: threading.Event = field(default_factory=threading.Event)  # acks wait on it
    drop_ack_at: int | None = None  # apply this received batch, then break the stream
    applied_event: threading.Event = field(default_factory=threading.Event)
    token: str | None = None

    def __post_init__(self) -> None:
        self.gate.set()


class StandIn(ingest_pb2_grpc.IngestServicer):
    def __init__(self, store: Store) -> None:
        self.store = store

    def Stream(self, request_iterator: Iterator[ingest_pb2.Batch], context):
        st = self.store
        if st.token is not None:
            md = dict(context.invocation_metadata())
            if md.get("authorization") != f"Bearer {st.token}":
                context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong bearer token")
        for batch in request_iterator:
            st.gate.wait()
            with st.lock:
                st.received += 1
                received = st.received
                last = st.last_seq.get(batch.producer_id, -1)
                n = len(batch.labels.data) // 4
                if batch.sequence <= last:
                    ack = ingest_pb2.Ack(
                        producer_id=batch.producer_id, sequence=batch.sequence, duplicate=True
                    )
                elif batch.task == "bad":
                    ack = ingest_pb2.Ack(
                        producer_id=batch.producer_id,
                        sequence=batch.sequence,
                        error_code=3,
                        error_message="labels must be 0 or 1 for auc",
                    )
                else:
                    st.last_seq[batch.producer_id] = batch.sequence
                    st.samples += n
                    st.batches.append(batch)
                    ack = ingest_pb2.Ack(
                        producer_id=batch.producer_id, sequence=batch.sequence, samples=n
                    )
            if st.drop_ack_at is not None and received == st.drop_ack_at:
                st.applied_event.set()
                context.abort(grpc.StatusCode.UNAVAILABLE, "crashed before the ack")
            yield ack


class Server:
    def __init__(self, store: Store, port: int = 0) -> None:
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
        ingest_pb2_grpc.add_IngestServicer_to_server(StandIn(store), self.server)
        self.port = self.server.add_insecure_port(f"127.0.0.1:{port}")
        self.server.start()

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.server.stop(grace=None).wait()


@pytest.fixture
def store() -> Store:
    return Store()


@pytest.fixture
def server(store: Store) -> Iterator[Server]:
    srv = Server(store)
    yield srv
    srv.stop()


def stream(server: Server, **kw) -> MetricsStream:
    kw.setdefault("backoff_initial", 0.05)
    kw.setdefault("backoff_max", 0.2)
    return MetricsStream(server.target, experiment="exp", arm="a", run_id="run", rank=0, **kw)


def decode(arr: ingest_pb2.Array) -> np.ndarray:
    return np.frombuffer(arr.data, dtype="<f4" if arr.dtype == ingest_pb2.DTYPE_FLOAT32 else "<i8")


def segments(b: ingest_pb2.Batch) -> list[tuple[int, int]]:
    """(step, samples) of each step's rows of ``b``, as the service reads them."""
    return [(g.step, g.samples) for g in b.segments] or [(b.step, len(b.labels.data) // 4)]


def steps_sent(batches: list[ingest_pb2.Batch]) -> list[int]:
    return sorted(step for b in batches for step, _ in segments(b))


def test_log_flush_round_trip_keeps_values_and_columns(server: Server, store: Store) -> None:
    preds = torch.tensor([[0.1], [0.7], [0.4]])  # (n, 1) is flattened
    with stream(server) as s:
        assert s.log(
            preds,
            torch.tensor([0, 1, 1]),
            task="ctr",
            phase="eval",
            step=5,
            grouping_keys={"user": torch.tensor([3, 3, 9])},
            weights=np.array([1.0, 2.0, 1.0]),
        )
        preds.zero_()  # the stream copied the values
        s.flush()
        st = s.stats
    assert st.applied_samples == 3 and st.acked_batches == 1 and st.pending_samples == 0
    (b,) = store.batches
    assert (b.producer_id, b.experiment, b.arm, b.task, b.step) == (
        "run/rank0",
        "exp",
        "a",
        "ctr",
        5,
    )
    assert b.phase == ingest_pb2.PHASE_EVAL
    np.testing.assert_allclose(decode(b.predictions), [0.1, 0.7, 0.4], rtol=1e-6)
    np.testing.assert_array_equal(decode(b.labels), [0, 1, 1])
    np.testing.assert_array_equal(decode(b.weights), [1, 2, 1])
    assert b.grouping_keys[0].name == "user"
    np.testing.assert_array_equal(decode(b.grouping_keys[0].keys), [3, 3, 9])


def test_batching_segments_steps_and_splits_large_records(server: Server, store: Store) -> None:
    with stream(server, max_batch_samples=250) as s:
        s.log(torch.rand(1000), torch.randint(0, 2, (1000,)), task="ctr", phase="eval", step=1)
        s.flush()
        assert [len(b.labels.data) // 4 for b in store.batches] == [250, 250, 250, 250]
        seqs = [b.sequence for b in store.batches]
        assert seqs == sorted(seqs) and len(set(seqs)) == 4
        store.batches.clear()
        # many small records of 40 steps (10 records a step) in two tasks: merged
        # across steps with one segment per step; each prediction carries its step
        n_records = 400
        for i in range(n_records):
            step = i // 10
            task = "ctr" if step % 2 else "cvr"
            s.log(torch.full((5,), step / 100), torch.ones(5), task=task, phase="train", step=step)
        s.flush()
    assert sum(len(b.labels.data) // 4 for b in store.batches) == 5 * n_records
    per_step: dict[int, int] = {}
    for b in store.batches:
        preds, lo = decode(b.predictions), 0
        assert len(preds) <= 250
        assert sum(c for _, c in segments(b)) == len(preds)
        for step, count in segments(b):
            assert b.task == ("ctr" if step % 2 else "cvr")
            np.testing.assert_allclose(preds[lo : lo + count], step / 100, rtol=1e-6)
            per_step[step] = per_step.get(step, 0) + count
            lo += count
    assert per_step == {step: 50 for step in range(40)}
    assert len(store.batches) < n_records  # records queued while lingering were merged


def test_block_policy_waits_for_acks(server: Server, store: Store) -> None:
    store.gate.clear()  # the service stops acknowledging
    s = stream(server, max_pending_samples=1000, when_full="block")
    for step in range(2):
        assert s.log(torch.rand(400), torch.ones(400), task="ctr", phase="train", step=step)
    done = threading.Event()

    def third() -> None:
        s.log(torch.rand(400), torch.ones(400), task="ctr", phase="train", step=2)
        done.set()

    t = threading.Thread(target=third)
    t.start()
    assert not done.wait(0.5)  # blocked: 800 + 400 > 1000
    assert s.stats.pending_samples == 800
    with pytest.raises(FlushTimeout, match="800 samples"):
        s.flush(timeout=0.2)
    store.gate.set()
    assert done.wait(10)
    t.join()
    s.close()
    assert store.samples == 1200 and s.stats.dropped_records == 0


def test_drop_policy_counts_dropped_records(server: Server, store: Store) -> None:
    store.gate.clear()
    s = stream(server, max_pending_samples=1000, when_full="drop")
    kept = [
        s.log(torch.rand(400), torch.ones(400), task="ctr", phase="train", step=i) for i in range(5)
    ]
    assert kept == [True, True, False, False, False]
    store.gate.set()
    s.close()
    st = s.stats
    assert (st.dropped_records, st.dropped_samples) == (3, 1200)
    assert store.samples == 800 == st.applied_samples


@pytest.mark.parametrize("linger", [-0.1, float("nan")])
def test_bad_linger_is_a_clear_error(linger: float) -> None:
    with pytest.raises(ValueError, match="linger must be >= 0"):
        MetricsStream("127.0.0.1:1", experiment="e", arm="a", producer_id="p", linger=linger)


def test_linger_coalesces_steps_into_one_message_until_flush(server: Server, store: Store) -> None:
    with stream(server, linger=30.0) as s:
        for step in range(8):
            s.log(
                torch.full((3,), float(step)), torch.ones(3), task="ctr", phase="train", step=step
            )
        time.sleep(0.3)
        assert store.received == 0 and s.stats.queued_records == 8  # lingering
        s.flush(timeout=10)  # flush sends at once
    (b,) = store.batches
    assert segments(b) == [(step, 3) for step in range(8)]
    np.testing.assert_array_equal(decode(b.predictions), np.repeat(np.arange(8.0), 3))


def test_full_batch_does_not_linger(server: Server, store: Store) -> None:
    with stream(server, linger=30.0, max_batch_samples=10) as s:
        for step in range(4):
            s.log(torch.rand(5), torch.ones(5), task="ctr", phase="train", step=step)
        deadline = time.monotonic() + 10
        while store.received < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert [segments(b) for b in store.batches] == [[(0, 5), (1, 5)], [(2, 5), (3, 5)]]


def test_lost_ack_is_resent_and_counted_once(server: Server, store: Store) -> None:
    store.drop_ack_at = 3  # applied, but the stream breaks before its ack
    with stream(server, linger=0, max_batch_samples=100) as s:  # a batch per record
        for step in range(10):
            s.log(torch.rand(100), torch.ones(100), task="ctr", phase="train", step=step)
        s.flush(timeout=20)
        st = s.stats
    assert store.samples == 1000  # nothing lost, nothing twice
    assert steps_sent(store.batches) == list(range(10))
    assert st.reconnects >= 1 and st.resent_batches >= 1 and st.duplicate_batches >= 1
    # a duplicate's ack reports 0 samples: its samples were applied before the break
    assert st.applied_samples + 100 * st.duplicate_batches == 1000


def test_server_restart_under_the_stream(store: Store) -> None:
    srv = Server(store)
    port = srv.port
    s = stream(srv)
    restarted: list[Server] = []
    try:
        for step in range(30):
            if step == 10:
                srv.stop()  # down while training goes on

            if step == 20:
                restarted.append(Server(store, port))
            s.log(torch.rand(50), torch.ones(50), task="ctr", phase="train", step=step)
            time.sleep(0.01)
        s.flush(timeout=30)
        st = s.stats
        s.close()
    finally:
        for r in restarted:
            r.stop()
    assert store.samples == 30 * 50
    assert steps_sent(store.batches) == list(range(30))
    assert st.reconnects >= 1 and st.last_error is not None


def test_rejections_are_reported_by_flush_and_callback(server: Server, store: Store) -> None:
    seen = []
    s = stream(server, on_rejected=seen.append)
    s.log(torch.rand(4), torch.ones(4), task="bad", phase="eval", step=2)
    s.log(torch.rand(4), torch.ones(4), task="ctr", phase="eval", step=2)
    with pytest.raises(RejectedBatchesError, match="labels must be 0 or 1") as info:
        s.flush()
    assert "INVALID_ARGUMENT" in str(info.value) and "task bad, eval, step 2" in str(info.value)
    assert len(info.value.rejections) == 1 and len(seen) == 1
    st = s.stats
    assert (st.rejected_batches, st.rejected_samples, st.applied_samples) == (1, 4, 4)
    assert "labels must be 0 or 1" in st.last_error
    s.flush()  # reported once
    s.close()


def test_auth_token_from_env_and_fatal_error(
    server: Server, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    store.token = "s3cret"
    monkeypatch.setenv("RANKBOARD_TOKEN", "s3cret")
    with stream(server) as s:
        s.log(torch.rand(4), torch.ones(4), task="ctr", phase="eval", step=0)
        s.flush(timeout=10)
    assert store.samples == 4
    bad = stream(server, token="wrong")
    bad.log(torch.rand(4), torch.ones(4), task="ctr", phase="eval", step=0)
    with pytest.raises(MetricsStreamError, match="UNAUTHENTICATED"):
        bad.flush(timeout=10)
    with pytest.raises(MetricsStreamError, match="UNAUTHENTICATED"):
        bad.log(torch.rand(4), torch.ones(4), task="ctr", phase="eval", step=0)
    bad.close()  # the caller has seen the error: close() does not raise it again
    other = stream(server, token="wrong")
    other.log(torch.rand(4), torch.ones(4), task="ctr", phase="eval", step=0)
    with pytest.raises(MetricsStreamError, match="UNAUTHENTICATED"):
        other.close(timeout=10)
    assert store.samples == 4


def test_metric_declarations_are_attached(server: Server, store: Store) -> None:
    decl = {
        ("ctr", "eval"): "metrics { auc { thresholds: 0 } } "
        'metrics { grouped_auc { grouping_key: "user" } }',
        ("ctr", "train"): [metric_pb2.TrainMetricConfig(auc=metric_pb2.AUC(), decay_step=10)],
    }
    with stream(server, metrics=decl) as s:
        s.log([0.2, 0.8], [0, 1], task="ctr", phase="eval", step=0, grouping_keys={"user": [1, 1]})
        s.log([0.2, 0.8], [0, 1], task="ctr", phase="train", step=0)
        s.log([0.2, 0.8], [0.5, 3.0], task="watch_time", phase="eval", step=0)
    ev, tr, wt = sorted(store.batches, key=lambda b: b.sequence)
    assert [m.WhichOneof("metric") for m in ev.metrics] == ["auc", "grouped_auc"]
    assert [m.decay_step for m in tr.train_metrics] == [10]
    assert not wt.metrics and not wt.train_metrics


def test_input_checks_and_closed_stream(server: Server) -> None:
    s = stream(server)
    with pytest.raises(ValueError, match="3 labels"):
        s.log(torch.rand(2), torch.ones(3), task="ctr", phase="eval", step=0)
    with pytest.raises(ValueError, match="phase"):
        s.log(torch.rand(2), torch.ones(2), task="ctr", phase="test", step=0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="integers"):
        s.log(
            torch.rand(2),
            torch.ones(2),
            task="ctr",
            phase="eval",
            step=0,
            grouping_keys={"user": torch.rand(2)},
        )
    with pytest.raises(ValueError, match="train_metrics"):
        parse_metrics("train", "metrics { auc {} }")
    s.close()
    with pytest.raises(MetricsStreamError, match="closed"):
        s.log(torch.rand(2), torch.ones(2), task="ctr", phase="eval", step=0)


def test_multiclass_predictions_are_row_major(server: Server, store: Store) -> None:
    probs = torch.tensor([[0.1, 0.9], [0.6, 0.4]])
    with stream(server) as s:
        s.log(probs, torch.tensor([1, 0]), task="cls", phase="eval", step=0)
    (b,) = store.batches
    assert b.num_classes == 2
    np.testing.assert_allclose(decode(b.predictions), [0.1, 0.9, 0.6, 0.4], rtol=1e-6)


def test_stream_without_acks_is_reopened_after_ack_timeout(server: Server, store: Store) -> None:
    store.gate.clear()  # the connection stays open but nothing is acknowledged
    s = stream(server, ack_timeout=0.3)
    s.log(torch.rand(10), torch.ones(10), task="ctr", phase="train", step=0)
    deadline = time.monotonic() + 20
    while s.stats.reconnects < 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    st = s.stats
    assert st.reconnects >= 1 and "no ack for 0.3 s" in st.last_error
    store.gate.set()
    s.flush(timeout=20)
    s.close()
    assert store.samples == 10  # re-sent, applied once
