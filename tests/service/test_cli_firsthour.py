"""`rankboard send` as a new user meets it: every mistake answered, nothing doubled or mixed.

The command runs in this process (``cli.main``) against a real service on loopback
ports; reference values come from sklearn or from definitions written here.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from sklearn.metrics import mean_squared_error, roc_auc_score

from rankboard.service.cli import main
from tests.helpers import ab_export, free_port, sklearn_gauc, write_csv


def run_send(capsys, target: str, path: Path, *extra: str) -> tuple[int, str]:
    code = main(
        ["send", str(path), "--target", target, "--experiment", "e", "--task", "ctr",
         "--no-progress", "--timeout", "10", *extra]
    )  # fmt: skip
    return code, capsys.readouterr().err


def metrics(http_url: str, arm: str, task: str = "ctr", **params: str) -> dict:
    r = httpx.get(
        f"{http_url}/v1/experiments/e/arms/{arm}/metrics", params={"task": task, **params}
    )
    r.raise_for_status()
    return r.json()


def experiments(http_url: str) -> list:
    return httpx.get(f"{http_url}/v1/experiments").json()["experiments"]


# ------------------------------------------------------------------ item 1
def test_unreachable_target_fails_fast_with_the_address(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "p.csv", {"prediction": [0.2, 0.7], "label": [0, 1]})
    port = free_port()  # nobody listens there
    out = subprocess.run(
        [sys.executable, "-m", "rankboard.service.cli", "send", str(path), "--target",
         f"127.0.0.1:{port}", "--experiment", "e", "--arm", "a", "--task", "t", "--timeout", "1"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 2
    assert f"cannot reach the service at 127.0.0.1:{port}" in out.stderr
    assert "Traceback" not in out.stderr


# ------------------------------------------------------------------ item 2
def test_same_file_twice_is_a_no_op_and_replace_sends_again(service, tmp_path, capsys) -> None:
    data = ab_export(1500)
    path = write_csv(tmp_path / "ctrl.csv", data)
    args = ("--arm", "control", "--batch-size", "400", "--where", "arm=control")
    n = data["arm"].count("control")
    code, err = run_send(capsys, service.grpc_target, path, *args)
    assert code == 0, err
    assert f"{n:,} samples applied" in err
    assert metrics(service.http_url, "control", fresh="true")["samples"] == n
    code, err = run_send(capsys, service.grpc_target, path, *args)
    assert code == 0, err
    assert "already sent" in err and "nothing changed" in err
    # the first plain GET after the re-send shows current numbers (nothing changed)
    assert metrics(service.http_url, "control")["samples"] == n
    code, err = run_send(capsys, service.grpc_target, path, *args, "--replace")
    assert code == 0, err
    assert f"{n:,} samples applied" in err
    assert metrics(service.http_url, "control", fresh="true")["samples"] == 2 * n


def test_an_interrupted_send_completes_without_doubling(service, tmp_path, capsys) -> None:
    """The first 3 of 8 batches got through before the process died; the next send adds
    the other 5 and counts none twice (same content-derived producer and sequences)."""
    from rankboard.service.cli import build_parser
    from rankboard.service.send import _prepare, metric_blocks
    from rankboard.trainer.client import MetricsStream

    rng = np.random.default_rng(4)
    y = (rng.random(800) < 0.4).astype(int)
    p = np.round(0.3 * y + 0.7 * rng.random(800), 3)
    path = write_csv(tmp_path / "p.csv", {"prediction": list(p), "label": list(y)})
    argv = ["send", str(path), "--target", service.grpc_target, "--experiment", "e",
            "--task", "ctr", "--arm", "a", "--batch-size", "100", "--no-progress"]  # fmt: skip
    data, parts, declaration = _prepare(build_parser().parse_args(argv))
    capsys.readouterr()
    with MetricsStream(
        service.grpc_target, experiment="e", arm="a", producer_id=parts[0].producer_id,
        first_sequence=1, max_batch_samples=100, linger=0,
        metrics={("ctr", "eval"): metric_blocks(declaration, "eval")},
    ) as first:  # fmt: skip
        for lo in range(0, 300, 100):
            first.log(data["predictions"][lo : lo + 100], data["labels"][lo : lo + 100],
                      task="ctr", phase="eval", step=0)  # fmt: skip
            first.flush()
    assert metrics(service.http_url, "a", fresh="true")["samples"] == 300
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert "500 samples applied; 3 batches were there already" in err, err
    got = metrics(service.http_url, "a", fresh="true")
    assert got["samples"] == 800
    assert got["metrics"]["auc"] == pytest.approx(roc_auc_score(y, p.astype(np.float32)))


def test_after_a_delete_the_same_file_counts_again(service, tmp_path, capsys) -> None:
    """Deleting the experiment forgets its producers: a re-send is not a silent no-op."""
    path = write_csv(tmp_path / "a.csv", {"prediction": [0.1, 0.8, 0.4], "label": [0, 1, 1]})
    assert run_send(capsys, service.grpc_target, path, "--arm", "x")[0] == 0
    assert httpx.delete(f"{service.http_url}/v1/experiments/e").status_code == 200
    code, err = run_send(capsys, service.grpc_target, path, "--arm", "x")
    assert code == 0 and "3 samples applied" in err and "already" not in err
    assert metrics(service.http_url, "x", fresh="true")["samples"] == 3


def test_a_different_file_to_the_same_run_is_not_a_duplicate(service, tmp_path, capsys) -> None:
    a = write_csv(tmp_path / "a.csv", {"prediction": [0.1, 0.8, 0.4], "label": [0, 1, 1]})
    b = write_csv(tmp_path / "b.csv", {"prediction": [0.3, 0.9, 0.2], "label": [0, 1, 0]})
    assert run_send(capsys, service.grpc_target, a, "--arm", "x")[0] == 0
    code, err = run_send(capsys, service.grpc_target, b, "--arm", "x")
    assert code == 0 and "already" not in err
    got = metrics(service.http_url, "x", fresh="true")
    y = [0, 1, 1, 0, 1, 0]
    p = [0.1, 0.8, 0.4, 0.3, 0.9, 0.2]
    assert got["samples"] == 6
    assert got["metrics"]["auc"] == pytest.approx(roc_auc_score(y, p), abs=1e-6)


# ------------------------------------------------------------------ item 3
def test_stray_label_refused_naming_column_and_row(service, tmp_path, capsys) -> None:
    labels = [0, 1] * 50
    labels[36] = 2
    path = write_csv(
        tmp_path / "p.csv", {"prediction": [0.5] * 100, "label": labels, "ts": range(100)}
    )
    code, err = run_send(capsys, service.grpc_target, path, "--arm", "a")
    assert code == 2
    assert "column 'label'" in err and "row 37 (line 38 of the file)" in err
    assert "--kind regression" in err
    assert experiments(service.http_url) == []


def test_scores_outside_0_1_refused_for_binary_unless_declared(service, tmp_path, capsys) -> None:
    path = write_csv(
        tmp_path / "p.csv", {"prediction": [0.5, 1.5, 0.2, 3.0], "label": [1, 0, 0, 1]}
    )
    code, err = run_send(capsys, service.grpc_target, path, "--arm", "a")
    assert code == 2
    assert "column 'prediction' (predictions), row 2 (line 3 of the file): 1.5" in err
    assert "(2 such rows)" in err and experiments(service.http_url) == []
    code, err = run_send(
        capsys, service.grpc_target, path, "--arm", "a", "--metrics", "auc { thresholds: 0 }"
    )
    assert code == 0, err
    got = metrics(service.http_url, "a", fresh="true")["metrics"]
    assert got["auc"] == pytest.approx(roc_auc_score([1, 0, 0, 1], [0.5, 1.5, 0.2, 3.0]))


def test_kind_regression_declares_regression_metrics_and_says_so(service, tmp_path, capsys) -> None:
    rng = np.random.default_rng(5)
    y = np.round(rng.exponential(3.0, 300), 2)
    p = np.round(y + rng.normal(0, 1, 300), 2)
    path = write_csv(tmp_path / "wt.csv", {"prediction": list(p), "label": list(y)})
    code, err = run_send(capsys, service.grpc_target, path, "--arm", "a", "--kind", "regression")
    assert code == 0, err
    assert "declared metrics" in err and "mean_squared_error" in err and "--kind regression" in err
    got = metrics(service.http_url, "a", fresh="true")["metrics"]
    assert set(got) == {"xauc", "mean_squared_error", "mean_absolute_error"}
    assert got["mean_squared_error"] == pytest.approx(mean_squared_error(y, p), rel=1e-5)


def test_default_kind_is_binary_and_dry_run_sends_nothing(service, tmp_path, capsys) -> None:
    path = write_csv(tmp_path / "p.csv", {"prediction": [0.2, 0.7], "label": [0, 1]})
    code, err = run_send(capsys, service.grpc_target, path, "--arm", "a", "--dry-run")
    assert code == 0, err
    assert "--kind binary (the default)" in err
    assert "auc { thresholds: 0 } normalized_entropy {}" in err
    assert "dry run" in err
    assert experiments(service.http_url) == []


def test_multiclass_needs_class_columns(service, tmp_path, capsys) -> None:
    rng = np.random.default_rng(2)
    probs = rng.dirichlet([1, 1, 1], 200)
    y = rng.integers(0, 3, 200)
    cols = {f"c{k}": list(np.round(probs[:, k], 4)) for k in range(3)}
    path = write_csv(tmp_path / "mc.csv", {**cols, "label": list(y)})
    code, err = run_send(capsys, service.grpc_target, path, "--arm", "a", "--kind", "multiclass")
    assert code == 2 and "--pred-col c0,c1" in err
    code, err = run_send(
        capsys, service.grpc_target, path, "--arm", "a", "--kind", "multiclass",
        "--pred-col", "c0,c1,c2",
    )  # fmt: skip
    assert code == 0, err
    got = metrics(service.http_url, "a", fresh="true")["metrics"]
    p = np.stack([np.array(cols[f"c{k}"], np.float32) for k in range(3)], axis=1)
    assert got["accuracy"] == pytest.approx(float(np.mean(p.argmax(1) == y)), abs=1e-9)


# ------------------------------------------------------------------ item 5
def test_string_user_ids_are_hashed_and_grouped_auc_matches(service, tmp_path, capsys) -> None:
    data = ab_export(2000, seed=9)
    path = tmp_path / "ab.parquet"
    pq.write_table(pa.table(data), path)
    code, err = run_send(
        capsys, service.grpc_target, path, "--arm", "control", "--where", "arm=control",
        "--group-col", "user_id",
    )  # fmt: skip
    assert code == 0, err
    m = np.array(data["arm"]) == "control"
    p = np.array(data["prediction"], np.float32)[m]
    y = np.array(data["label"])[m]
    users = np.array(data["user_id"])[m]  # grouped by the strings themselves
    got = metrics(service.http_url, "control", fresh="true")["metrics"]
    assert got["grouped_auc"] == pytest.approx(sklearn_gauc(p, y, users), abs=1e-9)
    assert got["auc"] == pytest.approx(roc_auc_score(y, p), abs=1e-9)


def test_hash_is_the_documented_blake2b() -> None:
    from rankboard.service.send import key_column, stable_key_hash

    digest = hashlib.blake2b(b"u1002492", digest_size=8).digest()
    assert stable_key_hash("u1002492") == int.from_bytes(digest, "little", signed=True)
    keys = key_column(np.array(["42", "u7", "-3", "42"], dtype=object), "k")
    assert keys.tolist() == [42, stable_key_hash("u7"), -3, 42]


@pytest.mark.parametrize(
    ("column", "value", "fragment"),
    [("label", "yes", "column 'label' (labels), row 2 (line 3 of the file): 'yes'"),
     ("prediction", "", "column 'prediction' (predictions), row 2 (line 3 of the file): empty")],
)  # fmt: skip
def test_non_numeric_values_refused_client_side(
    service, tmp_path, capsys, column, value, fragment
) -> None:
    cols = {"prediction": ["0.5", "0.3", "0.9"], "label": ["1", "0", "1"]}
    cols[column][1] = value
    path = write_csv(tmp_path / "p.csv", cols)
    code, err = run_send(capsys, service.grpc_target, path, "--arm", "a")
    assert code == 2
    assert fragment in err, err
    assert "rejected by the service" not in err
    assert experiments(service.http_url) == []


# ------------------------------------------------------------------ item 7
def test_arm_column_sends_each_arm_to_its_run(service, tmp_path, capsys) -> None:
    data = ab_export(3000, seed=4)
    path = write_csv(tmp_path / "ab.csv", data)
    code, err = run_send(
        capsys, service.grpc_target, path, "--arm-col", "arm", "--group-col", "user_id",
        "--batch-size", "700",
    )  # fmt: skip
    assert code == 0, err
    arms = np.array(data["arm"])
    for arm in ("control", "treatment"):
        m = arms == arm
        p = np.array(data["prediction"], np.float32)[m]
        y = np.array(data["label"])[m]
        got = metrics(service.http_url, arm, fresh="true")
        assert got["samples"] == int(m.sum())
        assert got["metrics"]["auc"] == pytest.approx(roc_auc_score(y, p), abs=1e-9)
        users = np.array(data["user_id"])[m]
        assert got["metrics"]["grouped_auc"] == pytest.approx(sklearn_gauc(p, y, users), abs=1e-9)


def test_a_row_without_an_arm_is_refused(service, tmp_path, capsys) -> None:
    path = write_csv(
        tmp_path / "p.csv",
        {"arm": ["a", "", "b"], "prediction": [0.5, 0.2, 0.3], "label": [1, 0, 1]},
    )
    code, err = run_send(capsys, service.grpc_target, path, "--arm-col", "arm")
    assert code == 2
    assert "column 'arm' (--arm-col), row 2 (line 3 of the file): empty" in err
    assert experiments(service.http_url) == []


def test_whole_file_with_an_arm_column_to_one_arm_warns(service, tmp_path, capsys) -> None:
    path = write_csv(tmp_path / "ab.csv", ab_export(300))
    code, err = run_send(capsys, service.grpc_target, path, "--arm", "control", "--dry-run")
    assert code == 0
    assert "warning: column 'arm' has 2 values (control, treatment)" in err
    assert "--arm-col arm" in err
    code, err = run_send(
        capsys, service.grpc_target, path, "--arm", "control", "--where", "arm=control",
        "--dry-run",
    )  # fmt: skip
    assert code == 0 and "warning" not in err


def test_where_filter_on_numbers_and_text(service, tmp_path, capsys) -> None:
    cols = {
        "prediction": [0.1, 0.9, 0.4, 0.6, 0.8, 0.3],
        "label": [0, 1, 0, 1, 1, 0],
        "day": [1, 1, 2, 2, 2, 2],
        "country": ["de", "fr", "de", "de", "fr", "de"],
    }
    path = write_csv(tmp_path / "p.csv", cols)
    code, err = run_send(
        capsys, service.grpc_target, path, "--arm", "a", "--where", "day=2",
        "--where", "country!=fr",
    )  # fmt: skip
    assert code == 0, err
    got = metrics(service.http_url, "a", fresh="true")
    assert got["samples"] == 3  # rows 3, 4, 6
    assert got["metrics"]["auc"] == pytest.approx(roc_auc_score([0, 1, 0], [0.4, 0.6, 0.3]))
    code, err = run_send(capsys, service.grpc_target, path, "--arm", "b", "--where", "dya=2")
    assert code == 2 and "no column 'dya'" in err


# ------------------------------------------------------------------ item 8
def test_progress_counts_acknowledged_samples(
    service_factory, tmp_path, capsys, monkeypatch
) -> None:
    """Refused for its token, the bar never claims the samples went through."""
    monkeypatch.delenv("RANKBOARD_TOKEN", raising=False)
    svc = service_factory(token="w")
    path = write_csv(tmp_path / "p.csv", {"prediction": [0.5] * 2000, "label": [0, 1] * 1000})
    code = main(
        ["send", str(path), "--target", svc.grpc_target, "--experiment", "e", "--arm", "a",
         "--task", "t", "--batch-size", "500", "--timeout", "20"]
    )  # fmt: skip
    err = capsys.readouterr().err
    assert code == 1
    assert err.upper().count("UNAUTHENTICATED") == 1, err
    assert "0/2.00k" in err and "100%" not in err and "2.00k/2.00k" not in err


# ------------------------------------------------------------------ item 11
def test_metrics_typo_points_where_the_user_typed_it(service, tmp_path, capsys) -> None:
    path = write_csv(tmp_path / "p.csv", {"prediction": [0.2, 0.7], "label": [0, 1], "u": [1, 2]})
    text = 'auc { thresholds: 0 } gauc { grouping_key: "u" }'
    code, err = run_send(
        capsys, service.grpc_target, path, "--arm", "a", "--group-col", "u", "--metrics", text
    )
    assert code == 2
    assert f"unknown metric 'gauc' at character {text.index('gauc') + 1}" in err
    assert "did you mean grouped_auc?" in err
    for name in ("auc", "grouped_auc", "xauc", "normalized_entropy", "mean_squared_error"):
        assert name in err.split("valid metrics:")[1]
    text = 'auc { thresholds: 0 } grouped_auc { grouping_kye: "u" }'
    code, err = run_send(
        capsys, service.grpc_target, path, "--arm", "a", "--group-col", "u", "--metrics", text
    )
    assert code == 2 and "grouping_kye" in err
    assert f"character {text.index('grouping_kye') + 1} of --metrics" in err, err
    assert experiments(service.http_url) == []
