"""The dashboard's routes on a real service: packaged static files, offline API pages,
the read token (issue 15 item 5) and the bulk history route the page draws from."""

from __future__ import annotations

import fnmatch
import os
import re
import tomllib
from importlib import resources
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest

from rankboard.protos import ingest_pb2_grpc
from rankboard.service.rest.dashboard import compact
from tests.helpers import make_batch

ROOT = Path(__file__).resolve().parents[2]
STATIC_FILES = [
    "index.html",
    "app.js",
    "app.css",
    "token.js",
    "vendor/VERSIONS.md",
    "vendor/uplot/uPlot.iife.min.js",
    "vendor/uplot/uPlot.min.css",
    "vendor/uplot/LICENSE",
    "vendor/swagger-ui/swagger-ui-bundle.js",
    "vendor/swagger-ui/swagger-ui.css",
    "vendor/swagger-ui/LICENSE",
    "vendor/redoc/redoc.standalone.js",
    "vendor/redoc/LICENSE",
]


def _send_runs(
    svc, arms=("control", "treatment"), steps=(1, 2, 3), n=400, seed=0, token=None, exp="exp"
) -> None:
    metadata = [("authorization", f"Bearer {token}")] if token else None
    rng = np.random.default_rng(seed)
    with grpc.insecure_channel(svc.grpc_target) as channel:
        stub = ingest_pb2_grpc.IngestStub(channel)
        for i, arm in enumerate(arms):
            for step in steps:
                y = rng.integers(0, 2, n).astype(np.float32)
                p = np.clip(0.3 + (0.3 + 0.05 * i) * y + rng.normal(0, 0.2, n), 0, 1)
                ack = stub.Send(
                    make_batch(
                        preds=p,
                        labels=y,
                        producer=arm,
                        seq=step,
                        experiment=exp,
                        arm=arm,
                        step=step,
                    ),
                    timeout=30,
                    metadata=metadata,
                )
                assert not ack.error_code, ack.error_message


def test_static_files_are_package_data() -> None:
    """Every static file is in the package and matched by pyproject's package-data."""
    static = resources.files("rankboard.service.rest") / "static"
    for name in STATIC_FILES:
        assert (static / name).is_file(), name
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = data["tool"]["setuptools"]["package-data"]["rankboard.service.rest"]
    base = ROOT / "service" / "rest"
    files = [p.relative_to(base).as_posix() for p in (base / "static").rglob("*") if p.is_file()]
    assert files
    for rel in files:
        # setuptools globs: "*" does not cross "/"
        assert any(
            fnmatch.fnmatch(rel, pat) and rel.count("/") == pat.count("/") for pat in patterns
        ), f"{rel} is not declared as package data"


def test_pages_are_public_and_hold_no_data_while_data_needs_the_token(service_factory) -> None:
    svc = service_factory(read_token="r3ad", token="wr1te")
    _send_runs(svc, arms=("secretarm",), steps=(1,), token="wr1te", exp="hiddenexp")
    auth = {"Authorization": "Bearer r3ad"}
    with httpx.Client(base_url=svc.http_url, timeout=30) as http:
        for path in ("/", "/static/app.js", "/static/token.js", "/docs", "/redoc"):
            r = http.get(path)
            assert r.status_code == 200, path
            assert "secretarm" not in r.text and "hiddenexp" not in r.text
        for path in (
            "/v1/experiments",
            "/openapi.json",
            "/metrics",
            "/v1/experiments/hiddenexp/histories?task=ctr",
        ):
            assert http.get(path).status_code == 401, path
            assert http.get(path, headers=auth).status_code == 200, path
        spec = http.get("/openapi.json", headers=auth).json()
        assert "/v1/experiments/{experiment}/histories" in spec["paths"]
        assert "/metrics" in spec["paths"]


def test_pages_load_nothing_from_the_network(service) -> None:
    """Every script, style and link of /, /docs and /redoc is served by the service."""
    with httpx.Client(base_url=service.http_url, timeout=30) as http:
        for page in ("/", "/docs", "/redoc"):
            html = http.get(page).text
            refs = re.findall(r'(?:src|href)="([^"]+)"', html)
            assert refs, page
            for ref in refs:
                if ref.startswith("data:") or not ref.startswith("/static/"):
                    assert not re.match(r"^(https?:)?//", ref), (page, ref)
                    continue
                r = http.get(ref)
                assert r.status_code == 200 and r.content, (page, ref)
        # the vendored bundles do not fetch fonts or scripts from a CDN at start
        redoc = http.get("/redoc").text
        assert "fonts.googleapis" not in redoc and "cdn.jsdelivr" not in redoc
        bundle = http.get("/static/vendor/redoc/redoc.standalone.js").text
        assert "cdn.redoc.ly" not in bundle  # its logo is inlined (vendor/VERSIONS.md)


@pytest.mark.parametrize(
    "header",
    [b"Bearer \xc3\xa9", b"Bearer \xff\xfe", "Bearer r3ád".encode(), b"\xe2\x82\xac"],
)
def test_non_ascii_authorization_is_401_not_500(service_factory, header: bytes) -> None:
    svc = service_factory(read_token="r3ad", token="wr1te")
    with httpx.Client(base_url=svc.http_url, timeout=30) as http:
        for method, path in (
            ("GET", "/v1/experiments"),
            ("GET", "/openapi.json"),
            ("GET", "/metrics"),
            ("DELETE", "/v1/experiments/exp"),
        ):
            r = http.request(method, path, headers={"Authorization": header})
            assert r.status_code == 401, (path, r.status_code, r.text)


def test_a_non_ascii_token_works_when_sent_as_utf8(service_factory) -> None:
    svc = service_factory(read_token="lé-jeton")
    with httpx.Client(base_url=svc.http_url, timeout=30) as http:
        ok = {"Authorization": "Bearer lé-jeton".encode()}
        assert http.get("/v1/experiments", headers=ok).status_code == 200
        latin1 = {"Authorization": "Bearer lé-jeton".encode("latin-1")}
        assert http.get("/v1/experiments", headers=latin1).status_code == 401


def test_histories_equal_each_arms_history(service) -> None:
    """One response holds every (arm, metric) series, equal to the history route's."""
    _send_runs(service, steps=(1, 2, 3, 4, 5))
    with httpx.Client(base_url=service.http_url, timeout=30) as http:
        body = http.get(
            "/v1/experiments/exp/histories", params={"task": "ctr", "max_points": 1000}
        ).json()
        runs = http.get("/v1/experiments/exp").json()["runs"]
        expected_pairs = {(r["arm"], m) for r in runs if r["phase"] == "eval" for m in r["metrics"]}
        got = {(s["arm"], s["metric"]): s for s in body["series"]}
        assert set(got) == expected_pairs
        for (arm, metric), series in got.items():
            points = http.get(
                f"/v1/experiments/exp/arms/{arm}/history",
                params={"task": "ctr", "metric": metric},
            ).json()["points"]
            assert series["steps"] == [p["step"] for p in points]
            for v, p in zip(series["values"], points, strict=True):
                assert v == pytest.approx(p["value"], rel=1e-5, abs=1e-12)
            for side in ("low", "high"):
                want = [p.get(side) for p in points]
                if all(w is None for w in want):
                    assert series[side] is None
                else:
                    assert series[side] == pytest.approx(want, rel=1e-5)
        thin = http.get(
            "/v1/experiments/exp/histories", params={"task": "ctr", "max_points": 2}
        ).json()
        for series in thin["series"]:
            assert series["steps"] == [1, 5]
        assert http.get("/v1/experiments/exp/histories", params={"task": "nope"}).status_code == 404


def test_compact_keeps_six_significant_digits() -> None:
    for v in (0.123456789, -98765.4321, 1.5e-7, 3.0, 0.0):
        c = compact([v])[0]
        assert c == float(f"{v:.6g}")
    assert compact([float("nan"), float("inf"), None]) == [None, None, None]


def test_train_histories_are_thinned_like_the_definition(service) -> None:
    """Decayed train histories (read thinned in SQL) equal the full history thinned by
    the definition: evenly spaced indices, first and last kept, numpy rounding."""
    from rankboard.protos import ingest_pb2, metric_pb2

    declared = [
        metric_pb2.TrainMetricConfig(auc=metric_pb2.AUC(), decay_step=1),
        metric_pb2.TrainMetricConfig(
            normalized_entropy=metric_pb2.NormalizedEntropy(), decay_step=1
        ),
    ]
    rng = np.random.default_rng(3)
    with grpc.insecure_channel(service.grpc_target) as channel:
        stub = ingest_pb2_grpc.IngestStub(channel)
        for arm in ("control", "treatment"):
            for step in range(1, 41):
                y = rng.integers(0, 2, 64).astype(np.float32)
                p = np.clip(0.3 + 0.3 * y + rng.normal(0, 0.2, 64), 0, 1)
                msg = make_batch(
                    preds=p,
                    labels=y,
                    producer=arm,
                    seq=step,
                    arm=arm,
                    step=step,
                    phase=ingest_pb2.PHASE_TRAIN,
                    train_metrics=declared,
                )
                assert not stub.Send(msg, timeout=30).error_code
    with httpx.Client(base_url=service.http_url, timeout=30) as http:
        full = {}
        for arm in ("control", "treatment"):
            for metric in ("auc", "normalized_entropy"):
                points = http.get(
                    f"/v1/experiments/exp/arms/{arm}/history",
                    params={"task": "ctr", "metric": metric, "phase": "train"},
                ).json()["points"]
                assert len(points) >= 20, points
                full[(arm, metric)] = points
        for k in (2, 3, 7, 16, 1000):
            body = http.get(
                "/v1/experiments/exp/histories",
                params={"task": "ctr", "phase": "train", "max_points": k},
            ).json()
            got = {(s["arm"], s["metric"]): s for s in body["series"]}
            assert set(got) == set(full)
            for key, points in full.items():
                n = len(points)
                idx = range(n) if n <= k else np.unique(np.round(np.linspace(0, n - 1, k)))
                want = [points[int(i)] for i in idx]
                assert got[key]["steps"] == [p["step"] for p in want], (key, k)
                assert got[key]["values"] == pytest.approx(
                    [p["value"] for p in want], rel=1e-5, abs=1e-12
                )
                assert got[key]["low"] is None and got[key]["high"] is None


def test_a_built_wheel_ships_the_static_files(tmp_path: Path) -> None:
    """The page works from a wheel install: every static file is in the built wheel."""
    import shutil
    import subprocess
    import sys
    import zipfile

    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    skip = shutil.ignore_patterns("__pycache__", "*.pyc")
    for package in ("protos", "service", "trainer"):
        shutil.copytree(ROOT / package, src / package, ignore=skip)
    cmd = [sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "--no-build-isolation"]
    out = subprocess.run(
        [*cmd, "-q", "--no-cache-dir", "-w", str(tmp_path / "dist")],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=src,
        env={**os.environ, "TMPDIR": str(tmp_path)},  # pip's scratch folders: not /tmp
    )
    assert out.returncode == 0, out.stderr[-2000:]
    (wheel,) = (tmp_path / "dist").glob("rankboard-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for name in STATIC_FILES:
        assert f"rankboard/service/rest/static/{name}" in names, name


def test_registry_histories_thin_by_index_and_stay_sane_with_gaps(tmp_path: Path) -> None:
    """Points numbered without gaps (as the store writes them): exactly the definition.
    With gaps: real points only, ascending, first and last kept, at most max_points."""
    from rankboard.service.state.registry import Registry

    reg = Registry(tmp_path / "r.sqlite")
    run = ("e", "a", "t", "train")
    rng = np.random.default_rng(4)
    whole = {
        "dense": list(range(0, 37)),
        "gappy": [p for p in range(0, 50) if p % 7 != 3],  # points missing
    }
    for metric, points in whole.items():
        reg.record_many(run, [(metric, p, 10 * p, float(rng.random())) for p in points])
    for k in (1, 2, 3, 5, 11, 36, 37, 1000, None):
        got = reg.histories(run, ["dense", "gappy", "absent"], k)
        assert got["absent"] == []
        full = reg.history(run, "dense")
        n = len(full)
        if k is None or n <= k:
            want = full
        elif k < 2:
            want = full[-1:]
        else:
            want = [full[int(i)] for i in np.unique(np.round(np.linspace(0, n - 1, k)))]
        assert got["dense"] == want, k
        full = reg.history(run, "gappy")
        g = got["gappy"]
        assert set(g) <= set(full) and g == sorted(g) and g[-1] == full[-1]
        assert len(g) <= (k or len(full)) and (k == 1 or g[0] == full[0])
