"""Dashboard and /metrics benchmark (issue 12), on loopback against a real service.

Three parts (each alone with ``--only``):

* ``page``: the dashboard with 50 arms x 20 metrics x 1,000 steps of history. 50 train
  runs are created over gRPC, each declaring 20 decayed AUCs; their 1,000 history
  points per metric are written to the store's history registry (the store's own path
  for decayed points; the values are synthetic random walks, so the numbers do not
  come from 50,000 training batches). Measured: the size of the history JSON the page
  asks for (its ``max_points``), and in headless Chromium the time from navigation to
  every chart drawn (``performance.now()`` when the charts are first rendered), cold
  (first load: the server computes everything) and warm (a second load).
* ``cap``: 10,000 eval runs in a store, ``/metrics`` with the default cap of 2,000
  series: the series exposed, the left-out counter, the scrape time.
* ``p99``: REST pollers (threads polling a run's metrics back to back) while a producer
  streams batches, without and then with a Prometheus scraper polling ``/metrics``
  every second: the pollers' p50/p99 in both phases.

Examples::

    python benchmarks/bench_dashboard.py                # all three (~2 minutes)
    python benchmarks/bench_dashboard.py --only page --arms 50 --metrics 20 --steps 1000
    python benchmarks/bench_dashboard.py --only p99 --pollers 8 --duration 15
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def _service(data_dir: Path, **kw):
    from rankboard.service.server import ServiceConfig, run_service

    return run_service(ServiceConfig(data_dir=data_dir, device="cpu", **kw))


def _batch(arm: str, seq: int, phase: int, step: int, n: int, rng, metrics=None, train=None):
    from rankboard.protos import ingest_pb2
    from rankboard.service.state.batch import encode_array

    y = rng.integers(0, 2, n).astype(np.float32)
    p = np.clip(0.3 + 0.3 * y + rng.normal(0, 0.2, n), 0, 1).astype(np.float32)
    return ingest_pb2.Batch(
        producer_id=arm,
        sequence=seq,
        experiment="big",
        arm=arm,
        task="ctr",
        phase=phase,
        step=step,
        predictions=encode_array(p),
        labels=encode_array(y),
        metrics=metrics or [],
        train_metrics=train or [],
    )


def bench_page(args: argparse.Namespace, work: Path) -> dict:
    import grpc
    import httpx

    from rankboard.protos import ingest_pb2, ingest_pb2_grpc, metric_pb2

    rng = np.random.default_rng(0)
    declared = [
        metric_pb2.TrainMetricConfig(auc=metric_pb2.AUC(), decay_step=100)
        for _ in range(args.metrics)
    ]
    out: dict = {"arms": args.arms, "metrics": args.metrics, "steps": args.steps}
    with _service(work / "page") as svc:
        with grpc.insecure_channel(svc.grpc_target) as channel:
            stub = ingest_pb2_grpc.IngestStub(channel)
            for a in range(args.arms):
                ack = stub.Send(
                    _batch(f"arm{a:02d}", 1, ingest_pb2.PHASE_TRAIN, 1, 256, rng, train=declared),
                    timeout=60,
                )
                assert not ack.error_code, ack.error_message
        run = svc.store.runs()[0]
        keys = run.metric_keys
        assert len(keys) == args.metrics, keys
        t = time.perf_counter()
        steps = np.arange(1, args.steps + 1) * 100
        for r in svc.store.runs():
            rows = []
            for m in keys:
                walk = np.clip(0.7 + np.cumsum(rng.normal(0, 0.002, args.steps)), 0, 1)
                rows += [
                    (m, i, int(s), float(v))
                    for i, (s, v) in enumerate(zip(steps, walk, strict=True))
                ]
            svc.store.registry.record_many(
                (r.key.experiment, r.key.arm, r.key.task, r.key.phase), rows
            )
        out["history_rows_written_s"] = round(time.perf_counter() - t, 2)
        # the browser first: its first load is the cold one (the server computes it all)
        out.update(_browser_load(svc.http_url, args, work))
        budget = 40000  # app.js POINT_BUDGET
        max_points = max(20, min(1000, budget // (args.arms * args.metrics)))
        with httpx.Client(base_url=svc.http_url, timeout=120) as http:
            t = time.perf_counter()
            r = http.get(
                "/v1/experiments/big/histories",
                params={"task": "ctr", "phase": "train", "max_points": max_points},
            )
            out["histories_after_page_s"] = round(time.perf_counter() - t, 3)
            assert r.status_code == 200, r.text
            out["histories_json_bytes"] = len(r.content)
            out["max_points"] = max_points
            full = http.get(
                "/v1/experiments/big/histories",
                params={"task": "ctr", "phase": "train", "max_points": args.steps},
            )
            out["histories_json_bytes_unthinned"] = len(full.content)
    return out


def _browser_load(url: str, args: argparse.Namespace, work: Path) -> dict:
    import shutil as sh

    if not (sh.which("chromium") and sh.which("chromedriver")):
        return {"browser": "skipped: chromium/chromedriver missing (make browser-deps)"}
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service as ChromeService
    from selenium.webdriver.support.ui import WebDriverWait

    options = webdriver.ChromeOptions()
    options.binary_location = sh.which("chromium")
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(arg)
    options.add_argument("--window-size=1400,1000")
    options.add_argument(f"--user-data-dir={work / 'chromium'}")  # removed with the work dir
    drv = webdriver.Chrome(
        options=options, service=ChromeService(executable_path=sh.which("chromedriver"))
    )
    out = {}
    try:
        page = f"{url}/?experiment=big&task=ctr&phase=train&baseline=arm00"
        for label in ("cold", "warm"):
            t = time.perf_counter()
            drv.get(page)
            WebDriverWait(drv, 120, poll_frequency=0.02).until(
                lambda d: d.execute_script(
                    "const s = window.rankboard; return s && s.firstDrawMs !== undefined"
                    " && Object.keys(s.charts).length === arguments[0]"
                    " && Object.values(s.charts).every(c => c.arms.length === arguments[1])",
                    args.metrics,
                    args.arms,
                )
            )
            wall = time.perf_counter() - t
            js = drv.execute_script("return window.rankboard.firstDrawMs")
            out[f"page_{label}_charts_drawn_s"] = round(js / 1000, 3)
            out[f"page_{label}_wall_s"] = round(wall, 3)
            out[f"page_{label}_requests_ms"] = drv.execute_script(
                "const o = {}; for (const e of performance.getEntriesByType('resource'))"
                " { const k = new URL(e.name).pathname.split('/').pop();"
                " if (!k.includes('.')) o[k] = [Math.round(e.startTime), Math.round(e.duration)]; }"
                " return o;"
            )
    finally:
        drv.quit()
    return out


def bench_cap(args: argparse.Namespace, work: Path) -> dict:
    from prometheus_client.parser import text_string_to_metric_families

    from rankboard.protos import ingest_pb2
    from rankboard.service.rest.prometheus import StoreCollector, exposition
    from rankboard.service.state.store import MetricStore, StoreConfig

    rng = np.random.default_rng(1)
    store = MetricStore(StoreConfig(data_dir=work / "cap", fsync="none"))
    try:
        t = time.perf_counter()
        for i in range(args.runs):
            store.ingest(_batch(f"a{i:05d}", 1, ingest_pb2.PHASE_EVAL, 1, 8, rng))
        ingest_s = time.perf_counter() - t
        collector = StoreCollector(store, max_series=2000)
        times, fams = [], {}
        for _ in range(2):
            t = time.perf_counter()
            text = exposition(collector).decode()
            times.append(time.perf_counter() - t)
            fams = {
                s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples
            }
            series = sum(
                1
                for f in text_string_to_metric_families(text)
                if f.name
                in (
                    "rankboard_metric_value",
                    "rankboard_metric_interval_low",
                    "rankboard_metric_interval_high",
                )
                for _ in f.samples
            )
            values = sum(
                len(f.samples)
                for f in text_string_to_metric_families(text)
                if f.name == "rankboard_metric_value"
            )
        metrics_per_run = len(store.runs()[0].metric_keys)
        return {
            "runs": args.runs,
            "metrics_per_run": metrics_per_run,
            "ingest_s": round(ingest_s, 1),
            "series_exposed": series,
            "cap": 2000,
            "values_exposed": values,
            "values_left_out_in_scrape": fams["rankboard_metric_values_left_out_in_scrape"],
            "values_left_out_total_after_2_scrapes": fams["rankboard_metric_values_left_out_total"],
            "values_declared": sum(len(r.metric_keys) for r in store.runs()),
            "scrape_first_s": round(times[0], 3),
            "scrape_second_s": round(times[1], 3),
            "cap_holds": series <= 2000,
        }
    finally:
        store.close()


def bench_p99(args: argparse.Namespace, work: Path) -> dict:
    import grpc
    import httpx

    from rankboard.protos import ingest_pb2, ingest_pb2_grpc

    rng = np.random.default_rng(2)
    msgs = [_batch("load", i + 1, ingest_pb2.PHASE_EVAL, 1, 8192, rng) for i in range(400)]
    out: dict = {"pollers": args.pollers, "duration_s_per_phase": args.duration}
    with _service(work / "p99") as svc:
        stop = threading.Event()

        def produce() -> None:
            with grpc.insecure_channel(svc.grpc_target) as channel:
                stub = ingest_pb2_grpc.IngestStub(channel)
                for i, m in enumerate(msgs):
                    if stop.is_set():
                        return
                    stub.Send(m, timeout=60)
                    if i > 20:
                        time.sleep(0.05)

        producer = threading.Thread(target=produce, daemon=True)
        producer.start()
        with httpx.Client(base_url=svc.http_url) as warm:
            deadline = time.monotonic() + 60
            while warm.get("/v1/experiments").json()["experiments"] == []:
                assert time.monotonic() < deadline
                time.sleep(0.05)
        for phase in ("without_scraper", "with_scraper"):
            out[phase] = _poll_phase(
                svc.http_url, args.pollers, args.duration, phase == "with_scraper"
            )
        stop.set()
        producer.join(timeout=60)
    return out


def _poll_phase(url: str, pollers: int, duration: float, scraper: bool) -> dict:
    """``pollers`` threads polling a run's metrics back to back for ``duration`` s, and
    with ``scraper`` one more thread scraping ``/metrics`` every second."""
    import httpx

    latencies: list[float] = []
    scrapes: list[float] = []
    lock = threading.Lock()
    end = time.monotonic() + duration

    def poll() -> None:
        with httpx.Client(base_url=url, timeout=60) as http:
            while time.monotonic() < end:
                t = time.perf_counter()
                r = http.get("/v1/experiments/big/arms/load/metrics", params={"task": "ctr"})
                dt = time.perf_counter() - t
                assert r.status_code == 200, r.text
                with lock:
                    latencies.append(dt)

    def scrape() -> None:
        with httpx.Client(base_url=url, timeout=60) as http:
            while time.monotonic() < end:
                t = time.perf_counter()
                assert http.get("/metrics").status_code == 200
                scrapes.append(time.perf_counter() - t)
                time.sleep(max(0.0, 1.0 - (time.perf_counter() - t)))

    threads = [threading.Thread(target=poll) for _ in range(pollers)]
    if scraper:
        threads.append(threading.Thread(target=scrape))
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    latencies.sort()
    out = {
        "requests": len(latencies),
        "p50_ms": round(1000 * statistics.median(latencies), 2),
        "p99_ms": round(1000 * latencies[int(0.99 * (len(latencies) - 1))], 2),
    }
    if scrapes:
        out["scrapes"] = len(scrapes)
        out["scrape_p50_ms"] = round(1000 * statistics.median(scrapes), 2)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", choices=["page", "cap", "p99"], action="append")
    ap.add_argument("--arms", type=int, default=50)
    ap.add_argument("--metrics", type=int, default=20)
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--runs", type=int, default=10_000, help="runs for the cap part")
    ap.add_argument("--pollers", type=int, default=8)
    ap.add_argument("--duration", type=float, default=15.0, help="seconds per p99 phase")
    args = ap.parse_args()
    parts = args.only or ["page", "cap", "p99"]
    work = Path(tempfile.mkdtemp(prefix="rankboard-bench-dashboard-"))
    results = {}
    try:
        for part in parts:
            t = time.perf_counter()
            results[part] = {"page": bench_page, "cap": bench_cap, "p99": bench_p99}[part](
                args, work
            )
            results[part]["part_s"] = round(time.perf_counter() - t, 1)
            print(json.dumps({part: results[part]}), flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if "page" in results and "page_warm_charts_drawn_s" in results["page"]:
        page = results["page"]
        print(
            f"page: {args.arms} arms x {args.metrics} metrics x {args.steps} steps:"
            f" charts drawn {page['page_cold_charts_drawn_s']} s cold,"
            f" {page['page_warm_charts_drawn_s']} s warm (target < 1 s);"
            f" history JSON {page['histories_json_bytes'] / 1e6:.2f} MB at"
            f" max_points={page['max_points']} (target < 2 MB;"
            f" unthinned {page['histories_json_bytes_unthinned'] / 1e6:.1f} MB)"
        )


if __name__ == "__main__":
    main()
