"""`rankboard send`: a CSV or Parquet file through the trainers' client into a real service."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from sklearn.metrics import roc_auc_score

from tests.helpers import ServiceProcess, sklearn_gauc


def rankboard(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "rankboard.service.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )


def send_args(path: Path, target: str, *extra: str) -> list[str]:
    """``rankboard send`` of ``path`` into run e/a/t/eval, plus ``extra`` flags."""
    return [
        "send",
        str(path),
        "--target",
        target,
        "--experiment",
        "e",
        "--arm",
        "a",
        "--task",
        "t",
        "--phase",
        "eval",
        *extra,
    ]


@pytest.fixture
def table() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(21)
    n = 5000
    y = (rng.random(n) < 0.4).astype(np.float32)
    return {
        "score": np.round(0.3 * y + 0.7 * rng.random(n), 3).astype(np.float32),
        "click": y,
        "user_id": rng.integers(0, 300, n),
    }


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_send_file_then_query(service, tmp_path: Path, table, fmt: str) -> None:
    path = tmp_path / f"preds.{fmt}"
    if fmt == "csv":
        lines = ["score,click,user_id"] + [
            f"{s},{int(c)},{u}" for s, c, u in zip(*table.values(), strict=True)
        ]
        path.write_text("\n".join(lines) + "\n")
    else:
        pq.write_table(pa.table(table), path)
    out = rankboard(
        "send",
        str(path),
        "--target",
        service.grpc_target,
        "--experiment",
        "off",
        "--arm",
        "a",
        "--task",
        "ctr",
        "--phase",
        "eval",
        "--step",
        "7",
        "--pred-col",
        "score",
        "--label-col",
        "click",
        "--group-col",
        "user_id",
        "--batch-size",
        "1000",
        "--metrics",
        'auc { thresholds: 0 } grouped_auc { grouping_key: "user_id" }',
    )
    assert out.returncode == 0, out.stderr
    body = httpx.get(
        f"{service.http_url}/v1/experiments/off/arms/a/metrics",
        params={"task": "ctr", "fresh": "true"},
    ).json()
    p, y, g = table["score"], table["click"], table["user_id"]
    assert body["step"] == 7 and body["samples"] == 5000
    assert body["metrics"]["auc"] == pytest.approx(roc_auc_score(y, p), abs=1e-9)
    assert body["metrics"]["grouped_auc"] == pytest.approx(sklearn_gauc(p, y, g), abs=1e-9)


def test_send_rejected_exits_nonzero_with_message_once(service, tmp_path: Path) -> None:
    """With --metrics and no --kind the service judges the labels; its refusal is said once."""
    path = tmp_path / "bad.csv"
    path.write_text("prediction,label\n0.5,1\n0.2,3\n")
    out = rankboard(*send_args(path, service.grpc_target, "--metrics", "auc {}"))
    assert out.returncode == 1
    assert "rejected by the service" in out.stderr
    assert out.stderr.count("target must be 0 or 1") == 1, out.stderr
    assert httpx.get(f"{service.http_url}/v1/experiments").json() == {"experiments": []}


def test_send_missing_column(service, tmp_path: Path) -> None:
    path = tmp_path / "x.csv"
    path.write_text("p,label\n0.5,1\n")
    out = rankboard(*send_args(path, service.grpc_target))
    assert out.returncode != 0
    assert "no column" in out.stderr and "prediction" in out.stderr


def test_tokens_from_the_environment(tmp_path: Path) -> None:
    """`serve` takes RANKBOARD_TOKEN / RANKBOARD_READ_TOKEN, `send` RANKBOARD_TOKEN."""
    import os

    env = {**os.environ, "RANKBOARD_TOKEN": "w-env", "RANKBOARD_READ_TOKEN": "r-env"}
    svc = ServiceProcess(tmp_path / "data", env=env)
    svc.start()
    try:
        path = tmp_path / "p.csv"
        path.write_text("prediction,label\n0.5,1\n0.2,0\n0.7,1\n")
        args = send_args(path, f"127.0.0.1:{svc.gport}")
        no_token = {k: v for k, v in os.environ.items() if k != "RANKBOARD_TOKEN"}
        denied = rankboard(*args, env=no_token)
        assert denied.returncode != 0 and "UNAUTHENTICATED" in denied.stderr.upper()
        wrong = rankboard(*args, "--token", "nope", env=no_token)
        assert wrong.returncode != 0
        ok = rankboard(*args, env={**no_token, "RANKBOARD_TOKEN": "w-env"})
        assert ok.returncode == 0, ok.stderr
        url = f"http://127.0.0.1:{svc.hport}/v1/experiments"
        assert httpx.get(url).status_code == 401
        assert httpx.get(url, headers={"Authorization": "Bearer w-env"}).status_code == 401
        got = httpx.get(url, headers={"Authorization": "Bearer r-env"})
        assert got.status_code == 200 and got.json()["experiments"][0]["samples"] == 3
        assert httpx.get(f"http://127.0.0.1:{svc.hport}/healthz").status_code == 200
    finally:
        assert svc.stop() == 0


def test_every_scalar_metric_field_stays_with_its_metric() -> None:
    """``--metrics`` text groups each non-message field of the configs with the metric before
    it; a new scalar field (e.g. ``window_size``) must not become a metric of its own."""
    from rankboard.protos import metric_pb2
    from rankboard.service.send import _SCALAR_FIELDS, metric_blocks

    for cls in (metric_pb2.MetricConfig, metric_pb2.TrainMetricConfig):
        scalars = {f.name for f in cls.DESCRIPTOR.fields if f.message_type is None}
        assert {s for s in scalars if not s.startswith("legacy_")} <= _SCALAR_FIELDS
    assert (
        metric_blocks("auc {} window_size: 1000 normalized_entropy {}", "eval")
        == "metrics { auc {} window_size: 1000 } metrics { normalized_entropy {} }"
    )
