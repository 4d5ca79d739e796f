"""The demo never deletes a folder it did not create, and a re-run replaces only its own runs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np

from rankboard.service.server import ServiceConfig, run_service
from rankboard.trainer.client import MetricsStream
from rankboard.trainer.demo.run import MARKER, delete_demo_experiment, prepare_data_dir


def test_a_foreign_data_dir_is_refused_and_left_as_it_was(tmp_path: Path) -> None:
    data = tmp_path / "real-service-data"
    (data / "wal").mkdir(parents=True)
    (data / "wal" / "00000001.wal").write_bytes(b"precious")
    out = subprocess.run(
        [sys.executable, "-m", "rankboard.trainer.demo", "--tiny", "--data-dir", str(data)],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )  # fmt: skip
    assert out.returncode == 2
    assert "was not created by the demo" in out.stderr
    assert (data / "wal" / "00000001.wal").read_bytes() == b"precious"
    assert sorted(p.name for p in data.iterdir()) == ["wal"]


def test_new_and_empty_dirs_are_marked_and_reused(tmp_path: Path) -> None:
    assert prepare_data_dir(tmp_path / "new") is False
    assert (tmp_path / "new" / MARKER).is_file()
    (tmp_path / "new" / "wal").mkdir()  # state written by the demo's service
    assert prepare_data_dir(tmp_path / "new") is True
    assert (tmp_path / "new" / "wal").is_dir()
    (tmp_path / "empty").mkdir()
    assert prepare_data_dir(tmp_path / "empty") is False


def test_rerun_deletes_only_the_demo_experiment(tmp_path: Path) -> None:
    with run_service(ServiceConfig(data_dir=tmp_path / "data", device="cpu")) as service:
        _only_the_demo_experiment_goes(service)


def _only_the_demo_experiment_goes(service) -> None:
    rng = np.random.default_rng(0)
    for experiment in ("demo", "mine"):
        with MetricsStream(
            service.grpc_target, experiment=experiment, arm="a", producer_id=experiment
        ) as stream:
            stream.log(rng.random(50), rng.integers(0, 2, 50), task="ctr", phase="eval", step=1)
    assert delete_demo_experiment(service.http_url, "demo") == 1
    assert delete_demo_experiment(service.http_url, "demo") == 0
    names = [e["name"] for e in httpx.get(f"{service.http_url}/v1/experiments").json()[
        "experiments"]]  # fmt: skip
    assert names == ["mine"]
