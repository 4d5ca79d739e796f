"""Fixtures: a real service on ephemeral loopback ports (helpers: tests/helpers.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import pytest

from rankboard.protos import ingest_pb2_grpc
from rankboard.service.server import Service, ServiceConfig, run_service


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
