"""The multi-rank entry point under torchrun (2 gloo ranks) against a real service.

Each rank evaluates its half of the held-out rows and streams it as its own
producer; the service must hold every held-out row exactly once per eval step
and every training row once, whatever rank sent it.
"""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import httpx

from rankboard.trainer.demo.run import serve_subprocess
from rankboard.trainer.demo.train import DemoSettings


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_two_ranks_stream_every_row_once(tmp_path: Path) -> None:
    tiny = DemoSettings.tiny()
    held_out = round(tiny.num_samples * (1 - tiny.train_fraction))
    with serve_subprocess(tmp_path / "data", extra_args=["--device", "cpu"]) as svc:
        run = subprocess.run(
            [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--nproc-per-node",
                "2",
                "--master-addr",
                "127.0.0.1",
                "--master-port",
                str(_free_port()),
                "-m",
                "rankboard.trainer.demo.multirank",
                "--target",
                svc.grpc_target,
                "--arm",
                "multirank",
                "--tiny",
            ],
            capture_output=True,
            text=True,
            timeout=300,
            cwd=tmp_path,
        )
        assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
        assert run.stdout.count("arm multirank: 12 steps") == 2  # both ranks finished
        assert "(rank 0 of 2)" in run.stdout and "(rank 1 of 2)" in run.stdout
        with httpx.Client(base_url=svc.http_url, timeout=30) as http:
            detail = http.get("/v1/experiments/demo").json()
            runs = {(r["task"], r["phase"]): r for r in detail["runs"]}
            for task in ("ctr", "watch_time"):
                ev = runs[(task, "eval")]
                assert ev["steps"] == [6, 12]
                assert ev["samples"] == 2 * held_out
                for step in (6, 12):
                    body = http.get(
                        "/v1/experiments/demo/arms/multirank/metrics",
                        params={"task": task, "phase": "eval", "step": step},
                    ).json()
                    assert body["samples"] == held_out
                    assert all(v is not None for v in body["metrics"].values()), body
            assert runs[("ctr", "train")]["samples"] == tiny.steps * tiny.batch_size
            ctr = http.get(
                "/v1/experiments/demo/arms/multirank/metrics",
                params={"task": "ctr", "phase": "eval"},
            ).json()
            assert 0 < ctr["extras"]["grouped_auc.groups"] <= tiny.num_users
