"""`rankboard compare` against a real service: the table and ``--json``."""

from __future__ import annotations

import json
import re
from pathlib import Path

import httpx
import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from rankboard.service.cli import main
from rankboard.service.compare import format_compare
from tests.helpers import ab_export, free_port, write_csv


@pytest.fixture
def ab_service(service, tmp_path: Path, capsys):
    data = ab_export(2000, seed=11)
    path = write_csv(tmp_path / "ab.csv", data)
    code = main(
        ["send", str(path), "--target", service.grpc_target, "--experiment", "ab", "--task",
         "ctr", "--arm-col", "arm", "--group-col", "user_id", "--no-progress"]
    )  # fmt: skip
    assert code == 0, capsys.readouterr().err
    capsys.readouterr()
    return service, data


def compare_args(url: str, *extra: str) -> list[str]:
    return ["compare", "--url", url, "--experiment", "ab", "--task", "ctr",
            "--baseline", "control", *extra]  # fmt: skip


def test_table_shows_estimates_and_deltas(ab_service, capsys) -> None:
    service, data = ab_service
    assert main(compare_args(service.http_url)) == 0
    out = capsys.readouterr().out
    arms = np.array(data["arm"])
    p = np.array(data["prediction"], np.float32)
    y = np.array(data["label"])
    auc = {a: roc_auc_score(y[arms == a], p[arms == a]) for a in ("control", "treatment")}
    rows = {
        m.group(1): m.groups()[1:]
        for m in re.finditer(r"^auc\s+(control|treatment)\s+(\S+)(?:.*?\s([+-]\d\.\d+)\b)?", out,
                             re.M)
    }  # fmt: skip
    assert float(rows["control"][0]) == pytest.approx(auc["control"], abs=1e-6)
    assert float(rows["treatment"][0]) == pytest.approx(auc["treatment"], abs=1e-6)
    assert float(rows["treatment"][1]) == pytest.approx(auc["treatment"] - auc["control"], abs=2e-6)
    assert "baseline control" in out
    assert f"{int((arms == 'control').sum()):,} samples" in out


def test_json_is_the_rest_body(ab_service, capsys) -> None:
    service, _ = ab_service
    assert main(compare_args(service.http_url, "--json")) == 0
    printed = json.loads(capsys.readouterr().out)
    body = httpx.get(
        f"{service.http_url}/v1/experiments/ab/compare",
        params={"task": "ctr", "baseline": "control", "fresh": "true", "alpha": "0.05"},
    ).json()
    for arm in body["arms"].values():
        arm.pop("computed_at", None)
    for arm in printed["arms"].values():
        arm.pop("computed_at", None)
    assert printed == body


def test_errors_are_sentences(ab_service, capsys) -> None:
    service, _ = ab_service
    assert main(compare_args(service.http_url, "--baseline", "contrl")) == 1
    err = capsys.readouterr().err
    assert "HTTP 404" in err and "contrl" in err
    port = free_port()
    assert main(compare_args(f"http://127.0.0.1:{port}", "--timeout", "5")) == 2
    assert f"cannot reach the service at http://127.0.0.1:{port}" in capsys.readouterr().err


def test_table_with_intervals_and_with_nulls() -> None:
    """Interval fields shown when present; null ones (baseline deltas, no method) as '-'."""
    body = {
        "experiment": "ab", "task": "ctr", "phase": "eval", "baseline": "A", "step": 3,
        "alpha": 0.05, "sequential": False, "cluster": "user_id", "note": None,
        "arms": {
            "A": {"samples": 100, "positives": 30, "negatives": 70, "groups": {"user_id": 9},
                  "metrics": {"auc": 0.7, "recall_at_k": 0.5},
                  "intervals": {"auc": [0.65, 0.75], "recall_at_k": None},
                  "delta": {"auc": None, "recall_at_k": None}, "delta_intervals": None,
                  "p_values": None, "verdicts": None, "paired": None, "pairing": None},
            "B": {"samples": 100, "positives": 31, "negatives": 69, "groups": {"user_id": 9},
                  "metrics": {"auc": 0.72, "recall_at_k": 0.55},
                  "intervals": {"auc": [0.67, 0.77], "recall_at_k": None},
                  "delta": {"auc": 0.02, "recall_at_k": 0.05},
                  "delta_intervals": {"auc": [0.001, 0.039], "recall_at_k": None},
                  "p_values": {"auc": 0.039, "recall_at_k": None},
                  "verdicts": {"auc": "better", "recall_at_k": "inconclusive"},
                  "paired": True, "pairing": "paired: 100 samples"},
        },
    }  # fmt: skip
    text = format_compare(body)
    assert "95 % intervals (alpha 0.05), fixed horizon, cluster user_id" in text
    assert "B: 100 samples, 31 positives, 69 negatives, groups user_id 9, paired: 100" in text
    lines = {tuple(line.split()[:2]): line for line in text.splitlines() if line[:1].isalpha()}
    assert lines[("auc", "B")].split() == [
        "auc", "B", "0.720000", "[0.670000,", "0.770000]", "+0.020000",
        "[+0.001000,", "+0.039000]", "0.0390", "better",
    ]  # fmt: skip
    assert lines[("recall_at_k", "B")].split() == [
        "recall_at_k", "B", "0.550000", "-", "+0.050000", "-", "-", "inconclusive",
    ]  # fmt: skip
    assert lines[("auc", "A")].split() == ["auc", "A", "0.700000", "[0.650000,", "0.750000]",
                                            "-", "-", "-", "-"]  # fmt: skip


def test_same_eval_set_sent_with_sample_ids_is_paired(service, tmp_path: Path, capsys) -> None:
    """Two models scoring one eval set: `send --sample-id-col` twice, `compare` says paired."""
    rng = np.random.default_rng(12)
    n = 1500
    y = (rng.random(n) < 0.3).astype(int)
    base = 0.5 * y + rng.random(n)
    cols = {
        "request": [f"r-{i:05d}" for i in rng.permutation(n)],  # text ids, hashed
        "label": list(y),
        "model_a": list(np.round(base / 1.5, 4)),
        "model_b": list(np.round((base + 0.2 * y * rng.random(n)) / 1.7, 4)),
    }
    path = write_csv(tmp_path / "eval.csv", cols)
    for arm, col in (("a", "model_a"), ("b", "model_b")):
        code = main(
            ["send", str(path), "--target", service.grpc_target, "--experiment", "ab",
             "--task", "ctr", "--arm", arm, "--pred-col", col, "--sample-id-col", "request",
             "--no-progress"]
        )  # fmt: skip
        assert code == 0, capsys.readouterr().err
    capsys.readouterr()
    assert main(compare_args(service.http_url, "--baseline", "a", "--json")) == 0
    body = json.loads(capsys.readouterr().out)
    arm_b = body["arms"]["b"]
    assert arm_b["paired"] is True and arm_b["paired_samples"] == n
    pa, pb = (np.array(cols[c], np.float32) for c in ("model_a", "model_b"))
    assert arm_b["delta"]["auc"] == pytest.approx(
        roc_auc_score(y, pb) - roc_auc_score(y, pa), abs=1e-9
    )
    assert main(compare_args(service.http_url, "--baseline", "a")) == 0
    assert "b: 1,500 samples" in capsys.readouterr().out
