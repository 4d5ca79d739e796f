"""Fixtures: a real service on ephemeral loopback ports, and batch builders."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest

from rankboard.protos import ingest_pb2, ingest_pb2_grpc, metric_pb2
from rankboard.service.server import Service, ServiceConfig, run_service
from rankboard.service.state.batch import encode_array


def make_batch(
    *,
    preds: np.ndarray,
    labels: np.ndarray,
    producer: str = "p0",
    seq: int = 1,
    experiment: str = "exp",
    arm: str = "control",
    task: str = "ctr",
    phase: int = ingest_pb2.PHASE_EVAL,
    step: int = 1,
    keys: dict[str, np.ndarray] | None = None,
    weights: np.ndarray | None = None,
    metrics: list[metric_pb2.MetricConfig] | None = None,
    train_metrics: list[metric_pb2.TrainMetricConfig] | None = None,
) -> ingest_pb2.Batch:
    """A Batch message with the arrays encoded as the client encodes them."""
    msg = ingest_pb2.Batch(
        producer_id=producer,
        sequence=seq,
        experiment=experiment,
        arm=arm,
        task=task,
        phase=phase,
        step=step,
        predictions=encode_array(np.asarray(preds, np.float32)),
        labels=encode_array(np.asarray(labels, np.float32)),
        metrics=metrics or [],
        train_metrics=train_metrics or [],
    )
    for name, k in (keys or {}).items():
        msg.grouping_keys.add(name=name, keys=encode_array(np.asarray(k, np.int64)))
    if weights is not None:
        msg.weights.CopyFrom(encode_array(np.asarray(weights, np.float32)))
    return msg


@pytest.fixture
def service_factory(tmp_path: Path) -> Iterator:
    """Start services on a data dir (default: this test's); all are stopped at the end."""
    started: list[Service] = []

    def start(data_dir: Path | None = None, **kwargs: object) -> Service:
        kwargs = {"device": "cpu", **kwargs}
        cfg = ServiceConfig(data_dir=data_dir or tmp_path / "data", **kwargs)
        ctx = run_service(cfg)
        svc = ctx.__enter__()
        svc._ctx = ctx  # type: ignore[attr-defined]
        started.append(svc)
        return svc

    yield start
    for svc in started:
        svc.stop()


@pytest.fixture
def service(service_factory) -> Service:
    return service_factory()


@pytest.fixture
def stub(service: Service) -> Iterator[ingest_pb2_grpc.IngestStub]:
    with grpc.insecure_channel(service.grpc_target) as channel:
        yield ingest_pb2_grpc.IngestStub(channel)


@pytest.fixture
def http(service: Service) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=service.http_url, timeout=30) as client:
        yield client
