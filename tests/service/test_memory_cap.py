"""The cap on retained per-sample memory (``--max-retained-mb``) against the real service.

Exact metrics retain samples: exact AUC a float32 prediction and a float32 label
(8 bytes), grouped AUC those and an int64 key (16 bytes); normalized entropy and
binned AUC keep sums only. Every eval step also keeps its samples' columns for the A/B
statistics: a float32 prediction and label, and each int64 key column (8 or 16 bytes).
The service accounts each run's bytes from its declaration, refuses a batch that
would go over the cap with RESOURCE_EXHAUSTED (changing nothing), frees the room
when an experiment is deleted, and keeps the account through a restart.

The same cap also charges the fixed state (:mod:`rankboard.service.state.caps`): a run's
metric prototype, each step window and each producer entry; the caps below leave room
for those, measured by :func:`fixed` for the state each test creates.
"""

from __future__ import annotations

import subprocess
import sys

import grpc
import httpx
import numpy as np
import pytest

from rankboard.protos import ingest_pb2, ingest_pb2_grpc, parse_text
from rankboard.service.state import caps
from rankboard.service.state.batch import decode_batch
from rankboard.service.state.run import Run
from rankboard.service.state.store import StoreConfig
from tests.helpers import make_batch

RESOURCE_EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]


def data(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.4).astype(np.float32)
    return rng.random(n).astype(np.float32), y, rng.integers(0, 20, n)


def fixed(msg: ingest_pb2.Batch, runs: int, producers: int = 1, updates: int = 0) -> int:
    """The fixed bytes of ``runs`` runs of one window each, like ``msg``'s run, and of
    ``updates`` updates' chunk overhead."""
    import torch

    batch = decode_batch(msg, 1 << 20)
    run = Run.create(batch, torch.device("cpu"))
    return (
        runs * 2 * caps.window_cost(run)
        + producers * caps.producer_cost(msg.producer_id)
        + updates * caps.segment_cost(run, batch)
    )


def runs(http_url: str) -> dict[tuple[str, str], dict]:
    body = httpx.get(f"{http_url}/v1/experiments/exp").json()
    return {(r["arm"], r["task"]): r for r in body["runs"]}


@pytest.mark.parametrize(
    ("declaration", "keys", "per_sample"),
    [
        (None, True, 8 + 16 + 16),  # defaults: exact auc + NE + grouped_auc, + columns
        (None, False, 8 + 8),  # defaults without keys: exact auc + normalized entropy
        ("metrics { auc { thresholds: 200 } } metrics { normalized_entropy {} }", False, 8),
        (
            'metrics { auc { thresholds: 0 } } metrics { grouped_auc { grouping_key: "u" } }'
            " metrics { auc { thresholds: 0 } }",
            True,
            8 + 16 + 8 + 16,
        ),
    ],
)
def test_retained_bytes_follow_the_declaration(service, declaration, keys, per_sample) -> None:
    # a Batch message parses `metrics { ... }` blocks as a run's declaration
    metrics = list(parse_text(declaration, ingest_pb2.Batch()).metrics) if declaration else None
    p, y, g = data(500, seed=1)
    with grpc.insecure_channel(service.grpc_target) as ch:
        stub = ingest_pb2_grpc.IngestStub(ch)
        for seq, sl in enumerate((slice(0, 300), slice(300, 500)), start=1):
            ack = stub.Send(
                make_batch(
                    preds=p[sl],
                    labels=y[sl],
                    seq=seq,
                    keys={"u": g[sl]} if keys else None,
                    metrics=metrics if seq == 1 else None,
                )
            )
            assert ack.error_code == 0, ack.error_message
    assert runs(service.http_url)[("control", "ctr")]["retained_bytes"] == 500 * per_sample


def test_cap_refuses_without_change_and_delete_frees_room(service_factory) -> None:
    # 40 bytes a sample (defaults with keys, columns included): room for 1000 samples,
    # two eval runs of one step and a producer entry
    p, y, g = data(1200, seed=2)
    room = fixed(make_batch(preds=p[:2], labels=y[:2], keys={"u": g[:2]}), runs=2, updates=2)
    svc = service_factory(store=StoreConfig(max_retained_bytes=40 * 1000 + room))
    with grpc.insecure_channel(svc.grpc_target) as ch:
        stub = ingest_pb2_grpc.IngestStub(ch)
        for seq, arm in enumerate(["a", "b"], start=1):
            ack = stub.Send(
                make_batch(preds=p[:500], labels=y[:500], keys={"u": g[:500]}, arm=arm, seq=seq)
            )
            assert ack.error_code == 0, ack.error_message
        before = httpx.get(f"{svc.http_url}/v1/experiments/exp").json()
        ack = stub.Send(
            make_batch(preds=p[500:501], labels=y[500:501], keys={"u": g[500:501]}, arm="a", seq=3)
        )
        assert ack.error_code == RESOURCE_EXHAUSTED
        assert "max-retained-mb" in ack.error_message and "40 bytes a sample" in ack.error_message
        assert httpx.get(f"{svc.http_url}/v1/experiments/exp").json() == before
        # a train run retains no samples but its metric state counts too: refused when full
        train = make_batch(
            preds=p[:100], labels=y[:100], arm="a", seq=4, phase=ingest_pb2.PHASE_TRAIN
        )
        ack = stub.Send(train)
        assert ack.error_code == RESOURCE_EXHAUSTED, ack.error_message
        assert httpx.get(f"{svc.http_url}/v1/experiments/exp").json() == before
        assert httpx.delete(f"{svc.http_url}/v1/experiments/exp").status_code == 200
        # the delete freed the room: the train run (two windows of its decayed metrics)
        # and 500 more eval samples fit
        train.sequence = 5
        ack = stub.Send(train)
        assert (ack.error_code, ack.duplicate) == (0, False), ack.error_message
        ack = stub.Send(
            make_batch(preds=p[:500], labels=y[:500], keys={"u": g[:500]}, arm="c", seq=6)
        )
        assert ack.error_code == 0, ack.error_message


def test_the_account_survives_a_restart(service_factory, tmp_path) -> None:
    p, y, g = data(800, seed=3)
    room = fixed(make_batch(preds=p[:2], labels=y[:2], keys={"u": g[:2]}), runs=1, updates=2)
    cap = StoreConfig(max_retained_bytes=40 * 1000 + room)
    svc = service_factory(tmp_path / "d", store=cap)
    with grpc.insecure_channel(svc.grpc_target) as ch:
        stub = ingest_pb2_grpc.IngestStub(ch)
        assert (
            stub.Send(
                make_batch(preds=p[:400], labels=y[:400], keys={"u": g[:400]}, seq=1)
            ).error_code
            == 0
        )
        svc.store.checkpoint()  # one batch from the checkpoint, one from the log
        assert (
            stub.Send(
                make_batch(preds=p[400:], labels=y[400:], keys={"u": g[400:]}, seq=2)
            ).error_code
            == 0
        )
    svc.stop()
    svc2 = service_factory(tmp_path / "d", store=cap)
    assert runs(svc2.http_url)[("control", "ctr")]["retained_bytes"] == 800 * 40
    with grpc.insecure_channel(svc2.grpc_target) as ch:
        ack = ingest_pb2_grpc.IngestStub(ch).Send(
            make_batch(preds=p[:201], labels=y[:201], keys={"u": g[:201]}, seq=3)
        )
        assert ack.error_code == RESOURCE_EXHAUSTED  # 800 + 201 > 1000


@pytest.mark.parametrize("value", ["0", "-5", "x"])
def test_bad_cap_on_the_command_line_is_a_clear_error(value, tmp_path) -> None:
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "rankboard.service.cli",
            "serve",
            "--data-dir",
            str(tmp_path / "d"),
            "--max-retained-mb",
            value,
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 2 and "--max-retained-mb" in run.stderr
