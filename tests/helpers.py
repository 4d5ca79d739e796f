"""Helpers shared by the service-side tests (import them from here, never from a test file).

* :func:`free_port` and :class:`ServiceProcess`: a ``rankboard serve`` subprocess on
  free loopback ports;
* :func:`make_batch`: an ingest ``Batch`` message with arrays encoded as the client does;
* :func:`sklearn_gauc`: the one reference for grouped AUC (sklearn's AUC per group);
* :func:`write_csv` and :func:`ab_export`: input files for ``rankboard send``.

Fixtures (a service in this process, gRPC stub, HTTP client) live in
``tests/service/conftest.py``.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score

from rankboard.protos import ingest_pb2, metric_pb2
from rankboard.service.state.batch import encode_array


def free_port() -> int:
    """A loopback TCP port that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def sklearn_gauc(preds: np.ndarray, labels: np.ndarray, groups: np.ndarray) -> float:
    """Grouped AUC by definition: mean of sklearn's AUC over the groups with both classes.

    >>> sklearn_gauc(np.array([0.1, 0.9, 0.8, 0.2, 0.5]), np.array([0, 1, 0, 1, 1]),
    ...              np.array([1, 1, 2, 2, 3]))
    0.5
    """
    preds, labels, groups = np.asarray(preds), np.asarray(labels), np.asarray(groups)
    aucs = []
    for key in np.unique(groups):
        m = groups == key
        if 0 < labels[m].sum() < m.sum():
            aucs.append(roc_auc_score(labels[m], preds[m]))
    return float(np.mean(aucs))


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


class ServiceProcess:
    """``rankboard serve`` as a subprocess on free ports (gRPC ``gport``, HTTP ``hport``)."""

    def __init__(
        self, data_dir: Path, env: dict[str, str] | None = None, args: tuple[str, ...] = ()
    ) -> None:
        self.data_dir = data_dir
        self.env = env
        self.args = args
        self.gport, self.hport = free_port(), free_port()
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        """Start it and wait for its first line (the listening addresses)."""
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "rankboard.service.cli",
                "serve",
                "--grpc-port",
                str(self.gport),
                "--http-port",
                str(self.hport),
                "--data-dir",
                str(self.data_dir),
                "--device",
                "cpu",
                "--checkpoint-interval",
                "0.3",
                "--log-level",
                "WARNING",
                *self.args,
            ],
            stdout=subprocess.PIPE,
            text=True,
            env=self.env,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert "gRPC on" in line, line

    def kill(self) -> None:
        """SIGKILL: no shutdown work at all."""
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> int:
        """SIGTERM and wait; the exit status."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=60)


def write_csv(path: Path, columns: dict[str, list]) -> Path:
    """Write ``columns`` as a CSV file with a header line; return ``path``."""
    names = list(columns)
    rows = zip(*columns.values(), strict=True)
    path.write_text(",".join(names) + "\n" + "".join(",".join(map(str, r)) + "\n" for r in rows))
    return path


def ab_export(n: int = 4000, seed: int = 3) -> dict[str, list]:
    """A one-file A/B export: string user ids, an arm column, a timestamp."""
    rng = np.random.default_rng(seed)
    arm = rng.choice(["control", "treatment"], n)
    y = (rng.random(n) < 0.3).astype(int)
    lift = np.where(arm == "treatment", 0.35, 0.25)
    p = np.round(np.clip(lift * y + 0.7 * rng.random(n), 0, 1), 3)
    users = rng.integers(0, 150, n)
    return {
        "user_id": [f"u{100000 + u}" for u in users],
        "arm": list(arm),
        "prediction": list(p),
        "label": list(y),
        "ts": list(range(1_700_000_000, 1_700_000_000 + n)),
    }


def fetch_metrics(url: str, arm: str, task: str = "ctr", phase: str = "eval") -> dict:
    """``GET .../arms/{arm}/metrics`` of experiment ``exp``, recomputed (``fresh=true``)."""
    import httpx

    r = httpx.get(
        f"{url}/v1/experiments/exp/arms/{arm}/metrics",
        params={"task": task, "phase": phase, "fresh": "true"},
        timeout=60,
    )
    r.raise_for_status()
    return r.json()
