"""The dashboard in a real headless Chromium (selenium) against a real service.

Runs sent over gRPC; the test opens ``/``, gives the read token through the page's
form, navigates to the experiment, checks the comparison table against the REST
``compare`` values, the charts (one series per arm, pixels drawn), an update after a
new batch without a reload, deep links and the browser console.

Needs Debian's ``chromium`` and ``chromium-driver`` (``make browser-deps``); without
them the test skips, unless ``RANKBOARD_REQUIRE_BROWSER=1`` (CI), where it fails.
``RANKBOARD_SCREENSHOT=docs/dashboard.png`` also writes the README's screenshot.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest

from rankboard.protos import ingest_pb2_grpc
from tests.helpers import make_batch

READ, WRITE = "dash-read", "dash-write"
ARMS = ("control", "treatment", "treatment_b")
TASK = "ctr"


def _browser_paths() -> tuple[str, str] | None:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    return (chromium, driver) if chromium and driver else None


@pytest.fixture
def driver(tmp_path: Path):
    paths = _browser_paths()
    if paths is None:
        msg = (
            "chromium and chromedriver are not installed: run `make browser-deps`"
            " (apt-get install -y chromium chromium-driver) to run the dashboard's browser test"
        )
        if os.environ.get("RANKBOARD_REQUIRE_BROWSER") == "1":
            pytest.fail(msg + " (RANKBOARD_REQUIRE_BROWSER=1)")
        pytest.skip(msg)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service as ChromeService

    options = webdriver.ChromeOptions()
    options.binary_location = paths[0]
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1400,1700",
        "--no-first-run",
        "--disable-extensions",
        "--disable-background-networking",
        f"--user-data-dir={tmp_path / 'chromium'}",
        f"--disk-cache-dir={tmp_path / 'chromium-cache'}",
    ):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    service = ChromeService(executable_path=paths[1], log_output=os.devnull)
    drv = webdriver.Chrome(options=options, service=service)
    drv.set_page_load_timeout(30)
    try:
        yield drv
    finally:
        drv.quit()


def _send(svc, step: int, seq: int, n: int = 500, seed: int = 0) -> None:
    rng = np.random.default_rng(seed + 1000 * step)
    with grpc.insecure_channel(svc.grpc_target) as channel:
        stub = ingest_pb2_grpc.IngestStub(channel)
        for i, arm in enumerate(ARMS):
            y = rng.integers(0, 2, n).astype(np.float32)
            lift = 0.25 + 0.04 * i + 0.01 * step
            p = np.clip(0.35 + lift * y + rng.normal(0, 0.2, n), 0, 1).astype(np.float32)
            keys = {"user_id": rng.integers(0, n // 4, n)}
            msg = make_batch(
                preds=p, labels=y, producer=arm, seq=seq, arm=arm, step=step, task=TASK, keys=keys
            )
            ack = stub.Send(msg, timeout=30, metadata=[("authorization", f"Bearer {WRITE}")])
            assert not ack.error_code, ack.error_message


def _wait(drv, predicate, timeout: float = 20, what: str = "condition"):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(drv, timeout, poll_frequency=0.1).until(
        lambda d: predicate(d), message=f"timed out waiting for {what}"
    )


def _severe(drv) -> list[dict]:
    return [e for e in drv.get_log("browser") if e["level"] == "SEVERE"]


def _table(drv) -> dict[tuple[str, str], dict[str, str | None]]:
    """(metric, arm) -> {field: data-raw or text} of the comparison table."""
    rows = drv.execute_script(
        """
        return Array.from(document.querySelectorAll('#comparison tbody tr')).map(tr => ({
          metric: tr.dataset.metric, arm: tr.dataset.arm,
          cells: Object.fromEntries(Array.from(tr.querySelectorAll('td[data-field]')).map(
            td => [td.dataset.field, {raw: td.dataset.raw ?? null, text: td.textContent}]))
        }));"""
    )
    return {(r["metric"], r["arm"]): r["cells"] for r in rows}


def _compare(http: httpx.Client, baseline: str = "control") -> dict:
    r = http.get(
        "/v1/experiments/exp/compare",
        params={"task": TASK, "baseline": baseline, "phase": "eval"},
    )
    assert r.status_code == 200, r.text
    return r.json()


def _table_matches(drv, cmp: dict) -> bool:
    table = _table(drv)
    for arm, a in cmp["arms"].items():
        for metric, v in a["metrics"].items():
            cells = table.get((metric, arm))
            if cells is None or json.loads(cells["value"]["raw"]) != v:
                return False
    return True


def test_dashboard_in_a_real_browser(service_factory, driver, tmp_path: Path) -> None:
    svc = service_factory(read_token=READ, token=WRITE)
    for step in (1, 2, 3, 4):
        _send(svc, step, seq=step)
    http = httpx.Client(
        base_url=svc.http_url, timeout=30, headers={"Authorization": f"Bearer {READ}"}
    )
    drv = driver
    from selenium.webdriver.common.by import By

    # --- the token: asked once by the page's form, a wrong one is asked again --------
    drv.get(svc.http_url + "/")
    _wait(drv, lambda d: d.find_elements(By.ID, "token-input"), what="the token form")
    drv.find_element(By.ID, "token-input").send_keys("wrong-token")
    drv.find_element(By.ID, "token-submit").click()
    _wait(
        drv,
        lambda d: "refused" in d.find_element(By.CSS_SELECTOR, ".token-message").text,
        what="the wrong token to be refused",
    )
    drv.get_log("browser")  # the refused request's 401 is expected: forget it
    drv.find_element(By.ID, "token-input").send_keys(READ)
    drv.find_element(By.ID, "token-submit").click()
    assert drv.execute_script("return sessionStorage.getItem('rankboard.readToken')") == READ
    assert READ not in drv.current_url

    # --- experiments list -> experiment page ---------------------------------------
    link = _wait(
        drv,
        lambda d: d.find_elements(By.CSS_SELECTOR, 'tr[data-experiment="exp"] a.exp-link'),
        what="the experiments list",
    )[0]
    listed = http.get("/v1/experiments").json()["experiments"][0]
    row = drv.find_element(By.CSS_SELECTOR, 'tr[data-experiment="exp"]').text
    assert f"{listed['samples']:,}" in row and all(a in row for a in ARMS)
    drv.execute_script("window.__sameDocument = 1")
    link.click()
    _wait(drv, lambda d: "experiment=exp" in d.current_url, what="the deep link")

    # --- the comparison table shows the service's values ----------------------------
    cmp = _compare(http)
    _wait(drv, lambda d: _table_matches(d, cmp), what="the table to equal REST compare")
    runs = http.get("/v1/experiments/exp").json()["runs"]
    declared = {m for r in runs for m in r["metrics"]}
    table = _table(drv)
    assert {m for m, _ in table} == declared
    assert {a for _, a in table} == set(ARMS)
    for arm, a in cmp["arms"].items():
        for metric, v in a["metrics"].items():
            cells = table[(metric, arm)]
            shown = cells["value"]["text"]
            assert (v is None and shown == "–") or float(shown) == pytest.approx(v, abs=5e-5)
            if arm != cmp["baseline"]:
                d = a["delta"][metric]
                assert json.loads(cells["delta"]["raw"]) == d
                verdict = (a.get("verdicts") or {}).get(metric)
                if verdict:
                    assert cells["verdict"]["text"] == verdict
                p = (a.get("p_values") or {}).get(metric)
                assert json.loads(cells["p"]["raw"]) == p
            iv = (a.get("intervals") or {}).get(metric)
            if iv:
                assert cells["interval"]["text"].startswith("[")
    samples = {
        tr.get_attribute("data-arm"): tr.find_element(
            By.CSS_SELECTOR, 'td[data-field="samples"]'
        ).get_attribute("data-raw")
        for tr in drv.find_elements(By.CSS_SELECTOR, "#arms tbody tr")
    }
    assert samples == {arm: str(a["samples"]) for arm, a in cmp["arms"].items()}

    # --- charts: one per metric, one series per arm, pixels drawn --------------------
    def charts_ready(d) -> bool:
        got = d.execute_script(
            "return Object.fromEntries(Object.entries(window.rankboard.charts)"
            ".map(([m, c]) => [m, c.arms]))"
        )
        return set(got) == declared and all(sorted(v) == sorted(ARMS) for v in got.values())

    _wait(drv, charts_ready, what="a chart per metric with every arm")
    total_bands = 0
    for metric in declared:
        labels = drv.execute_script(
            "return window.rankboard.charts[arguments[0]].plot.series.map(s => s.label)", metric
        )
        arm_series = [s for s in labels[1:] if not s.endswith((" low", " high"))]
        assert sorted(arm_series) == sorted(ARMS)
        # an interval band per arm wherever the history has intervals
        banded = drv.execute_script(
            "return window.rankboard.lastHistories.series"
            ".filter(s => s.metric === arguments[0] && s.low && s.high).map(s => s.arm)",
            metric,
        )
        bands = drv.execute_script(
            "return (window.rankboard.charts[arguments[0]].plot.bands || []).length", metric
        )
        assert bands == len(banded)
        assert {f"{a} low" for a in banded} <= set(labels)
        total_bands += bands
        drawn = drv.execute_script(
            """
            const box = document.querySelector('.chart[data-metric="' + arguments[0] + '"]');
            const cv = box.querySelector('canvas');
            const px = cv.getContext('2d').getImageData(0, 0, cv.width, cv.height).data;
            let n = 0; for (let i = 3; i < px.length; i += 4) { if (px[i] > 0) n++; }
            return [cv.width, cv.height, n];""",
            metric,
        )
        assert drawn[0] > 0 and drawn[1] > 0 and drawn[2] > 100, (metric, drawn)

    assert total_bands > 0  # eval histories carry intervals: the charts draw them

    # --- a new batch shows up without a reload -----------------------------------------
    _send(svc, 5, seq=5)
    cmp5 = _compare(http)
    assert all(a["step"] == 5 for a in cmp5["arms"].values())
    _wait(drv, lambda d: _table_matches(d, cmp5), timeout=30, what="the page to refresh")
    assert drv.execute_script("return window.__sameDocument") == 1  # no reload
    _wait(
        drv,
        lambda d: d.execute_script(
            "return Object.values(window.rankboard.charts)"
            ".every(c => c.plot.data[0][c.plot.data[0].length - 1] === 5)"
        ),
        what="the charts to reach step 5",
    )
    assert "data read" in drv.find_element(By.ID, "data-time").text

    if os.environ.get("RANKBOARD_SCREENSHOT"):
        shot = Path(os.environ["RANKBOARD_SCREENSHOT"])
        shot.parent.mkdir(parents=True, exist_ok=True)
        drv.execute_script("window.scrollTo(0, 0)")
        assert drv.save_screenshot(str(shot)), shot

    # --- deep link with another baseline, token remembered by the tab ------------------
    drv.get(svc.http_url + "/?experiment=exp&task=ctr&phase=eval&baseline=treatment")
    cmp_t = _compare(http, baseline="treatment")
    _wait(drv, lambda d: _table_matches(d, cmp_t), what="the deep-linked table")
    assert not drv.find_elements(By.ID, "token-input")
    assert drv.find_element(By.ID, "baseline").get_attribute("value") == "treatment"
    base_row = drv.find_element(By.CSS_SELECTOR, '#arms tbody tr[data-arm="treatment"]')
    assert "baseline" in base_row.text

    # --- pause stops the refresh ------------------------------------------------------
    drv.find_element(By.ID, "pause").click()
    assert drv.find_element(By.ID, "pause").text == "Resume"
    assert drv.execute_script("return window.rankboard.paused") is True

    # --- the API pages load offline with the token -------------------------------------
    drv.get(svc.http_url + "/docs")
    _wait(drv, lambda d: d.find_elements(By.CSS_SELECTOR, ".opblock"), what="Swagger UI")
    drv.get(svc.http_url + "/redoc")
    _wait(drv, lambda d: "histories" in d.page_source, timeout=30, what="ReDoc")

    assert _severe(drv) == []
    http.close()
