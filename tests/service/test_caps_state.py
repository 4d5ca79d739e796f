"""Every byte of state is charged to the caps (issue 15 item 6), on a real service:
step windows, train runs, producer entries; chunk files of deleted runs are compacted.

Before: a window (~20 KiB of objects) was charged 8 bytes a sample, train runs were
exempt from every cap, producers were kept forever, and chunk files were collected
only whole.
"""

from __future__ import annotations

import time

import grpc
import httpx
import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from rankboard.protos import ingest_pb2, ingest_pb2_grpc
from rankboard.service.state.batch import RunKey
from rankboard.service.state.store import MetricStore, StoreConfig
from tests.helpers import make_batch

RESOURCE_EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
P1 = np.array([0.3], np.float32)
Y1 = np.array([1], np.float32)


def test_step_windows_are_charged_what_they_cost(service_factory) -> None:
    cap = 1 << 20
    svc = service_factory(store=StoreConfig(max_retained_bytes=cap))
    accepted = 0
    with grpc.insecure_channel(svc.grpc_target) as ch:
        stub = ingest_pb2_grpc.IngestStub(ch)
        for step in range(1, 2000):  # one sample per eval step: a window each
            ack = stub.Send(make_batch(preds=P1, labels=Y1, step=step, seq=step))
            if ack.error_code:
                assert ack.error_code == RESOURCE_EXHAUSTED
                assert "step window" in ack.error_message
                break
            accepted += 1
    # a window's objects are over 10 KiB (about 20 KiB of resident memory measured):
    # the cap holds at most cap / 10 KiB of them (charged 16 bytes, it took 65,536)
    assert 0 < accepted <= cap // 10_000
    assert accepted == len(svc.store.run(RunKey("exp", "control", "ctr", "eval")).windows)


def test_train_runs_count_against_the_caps(service_factory) -> None:
    svc = service_factory(store=StoreConfig(max_runs=5, max_samples_total=10))
    with grpc.insecure_channel(svc.grpc_target) as ch:
        stub = ingest_pb2_grpc.IngestStub(ch)
        codes = [
            stub.Send(
                make_batch(
                    preds=P1, labels=Y1, arm=f"a{i}", seq=i + 1, phase=ingest_pb2.PHASE_TRAIN
                )
            )
            for i in range(8)
        ]
    assert [a.error_code for a in codes] == [0] * 5 + [RESOURCE_EXHAUSTED] * 3
    assert "--max-runs" in codes[5].error_message
    assert len(svc.store.runs()) == 5

    small = service_factory(store=StoreConfig(max_retained_bytes=200_000))
    with grpc.insecure_channel(small.grpc_target) as ch:
        stub = ingest_pb2_grpc.IngestStub(ch)
        ok = 0
        for i in range(200):
            train = make_batch(
                preds=P1, labels=Y1, arm=f"t{i}", seq=i + 1, phase=ingest_pb2.PHASE_TRAIN
            )
            if stub.Send(train).error_code:
                break
            ok += 1
    # a train run holds two sets of decayed metrics (prototype + window), over 20 KB
    assert 0 < ok <= 200_000 // 20_000


def resend(stub: ingest_pb2_grpc.IngestStub, **kw: object) -> ingest_pb2.Ack:
    return stub.Send(make_batch(preds=P1, labels=Y1, **kw))


def test_producers_expire_with_their_last_run(service_factory, tmp_path) -> None:
    data = tmp_path / "d"
    svc = service_factory(data)
    with grpc.insecure_channel(svc.grpc_target) as ch:
        stub = ingest_pb2_grpc.IngestStub(ch)
        assert resend(stub, producer="only-a", experiment="a", seq=1).error_code == 0
        assert resend(stub, producer="both", experiment="a", seq=1).error_code == 0
        assert resend(stub, producer="both", experiment="b", seq=2).error_code == 0
        svc.store.checkpoint()  # the producer table is in the checkpoint...
        assert httpx.delete(f"{svc.http_url}/v1/experiments/a").status_code == 200
    svc.stop()
    # ...and the deletion in the log: after a restart, "only-a" is forgotten (its
    # re-send is a new batch, into a new run), "both" still writes to b: exactly once
    svc = service_factory(data)
    with grpc.insecure_channel(svc.grpc_target) as ch:
        stub = ingest_pb2_grpc.IngestStub(ch)
        ack = resend(stub, producer="only-a", experiment="a", seq=1)
        assert (ack.error_code, ack.duplicate) == (0, False)
        ack = resend(stub, producer="both", experiment="b", seq=2)
        assert (ack.error_code, ack.duplicate) == (0, True)
    svc.store.checkpoint()
    assert set(svc.store.producers) == {"only-a", "both"}
    assert httpx.delete(f"{svc.http_url}/v1/experiments/b").status_code == 200
    assert set(svc.store.producers) == {"only-a"}


def test_chunk_files_of_deleted_runs_are_compacted(tmp_path) -> None:
    store = MetricStore(StoreConfig(data_dir=tmp_path, checkpoint_interval_s=3600))
    rng = np.random.default_rng(0)
    kept_p, kept_y = [], []
    for seq in range(1, 41):
        y = (rng.random(2000) < 0.4).astype(np.float32)
        p = rng.random(2000).astype(np.float32)
        experiment = "keep" if seq % 10 == 0 else "drop"  # 4 of 40 batches stay live
        if experiment == "keep":
            kept_p.append(p)
            kept_y.append(y)
        store.ingest(make_batch(preds=p, labels=y, experiment=experiment, seq=seq))
    store.checkpoint()
    folder = tmp_path / "checkpoints"

    def chunk_bytes() -> int:
        return sum(f.stat().st_size for f in folder.glob("chunks-*.pt"))

    full = chunk_bytes()
    store.delete_experiment("drop")
    store.checkpoint()  # rewrites the live tenth of the first chunk file
    store.checkpoint()  # the first file is no longer needed by a kept checkpoint
    live = sum(p.nbytes + y.nbytes for p, y in zip(kept_p, kept_y, strict=True))
    assert chunk_bytes() < full / 4
    assert chunk_bytes() < 3 * live  # retained chunks + the A/B sample columns
    store.close()
    store = MetricStore(StoreConfig(data_dir=tmp_path, checkpoint_interval_s=3600))
    snap, _ = store.snapshot(RunKey("keep", "control", "ctr", "eval"), fresh=True)
    p, y = np.concatenate(kept_p), np.concatenate(kept_y)
    assert snap.samples == len(y)
    assert snap.metrics["auc"] == pytest.approx(roc_auc_score(y, p), abs=1e-12)
    store.close()


def test_a_wall_clock_set_forward_expires_nothing(tmp_path) -> None:
    store = MetricStore(StoreConfig(data_dir=tmp_path, ttl_s=60, checkpoint_interval_s=3600))
    store.ingest(make_batch(preds=P1, labels=Y1))
    # the wall clock jumps 10 hours ahead (NTP step, operator): idle by the wall clock
    # only; the monotonic clock saw a batch just now, so the experiment stays
    assert store.expire(now=time.time() + 36_000) == []
    assert [r.key.experiment for r in store.runs()] == ["exp"]
    # really idle for an hour by both clocks: expired (and the producer forgotten)
    assert store.expire(now=time.time() + 3600, mono_now=time.monotonic() + 3600) == ["exp"]
    assert store.runs() == [] and store.producers == {}
    store.close()


def test_many_small_updates_are_charged_their_chunk_overhead(tmp_path) -> None:
    """Each update appends a chunk (tensor objects of ~600 bytes) to every per-sample
    list: one-sample batches into one step must not hold 40x what they are charged."""
    cap = 1 << 20
    cfg = StoreConfig(data_dir=tmp_path, max_retained_bytes=cap, checkpoint_interval_s=3600)
    store = MetricStore(cfg)
    accepted = 0
    for seq in range(1, 20_000):
        try:
            store.ingest(make_batch(preds=P1, labels=Y1, seq=seq))
        except Exception as err:  # noqa: BLE001 - the refusal is what is tested
            assert "max-retained-mb" in str(err)
            break
        accepted += 1
        if accepted == 1000:
            store.checkpoint()  # half of the account from a checkpoint, half from the log
    # charged 16 bytes a sample alone, 65,536 would fit; over 300 bytes an update: < 3,500
    assert 1000 < accepted < cap // 300
    store.close()
    store = MetricStore(cfg)  # the account survives the restart: still full
    with pytest.raises(Exception, match="max-retained-mb"):
        store.ingest(make_batch(preds=P1, labels=Y1, seq=accepted + 1))
    store.delete_experiment("exp")  # and a delete frees all of it
    store.ingest(make_batch(preds=P1, labels=Y1, seq=accepted + 2))
    store.close()


def test_deleted_experiments_leave_no_snapshot_locks(tmp_path) -> None:
    """A snapshot key's lock lives as long as its run: deleting experiments one after
    another (TTL, REST) must not grow the cache's lock table without bound."""
    store = MetricStore(StoreConfig(data_dir=tmp_path, checkpoint_interval_s=3600))
    preds = np.array([0.2, 0.7, 0.4], np.float32)
    labels = np.array([0, 1, 1], np.float32)
    for i in range(5):
        store.ingest(make_batch(preds=preds, labels=labels, seq=i + 1, experiment=f"e{i}"))
        snap, _ = store.snapshot(RunKey(f"e{i}", "control", "ctr", "eval"))
        assert snap.metrics["auc"] == pytest.approx(roc_auc_score(labels, preds))
    assert len(store.snapshots._locks) == 5
    for i in range(4):
        store.delete_experiment(f"e{i}")
    assert [k[0].experiment for k in store.snapshots._locks] == ["e4"]
    store.close()
