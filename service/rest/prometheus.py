"""``GET /metrics``: the service in the Prometheus text format.

One custom :class:`prometheus_client` collector reads everything at scrape time (no
per-request label churn): the operational counters of :mod:`rankboard.service.telemetry`,
sizes read from the store, and the metric values of every run as
``rankboard_metric_value{experiment,arm,task,phase,metric}`` with
``rankboard_metric_interval_low`` / ``_high`` where an interval exists (eval runs: the
latest step's 95 % interval at the run's default cluster). Metric series are bounded
by ``max_series`` (``rankboard serve --prometheus-max-series``, default 2000): runs are
taken most recently updated first; a metric's value and its interval bounds are exposed
together or not at all; the metric values left out (each with its bounds; every
declared metric of a run not read at all) are counted in
``rankboard_metric_values_left_out_in_scrape`` (this scrape) and
``rankboard_metric_values_left_out_total`` (since start). Series exposed:
``rankboard_metric_series``.

Example::

    >>> import tempfile
    >>> from prometheus_client.parser import text_string_to_metric_families
    >>> from rankboard.service.state.store import MetricStore, StoreConfig
    >>> d = tempfile.TemporaryDirectory()
    >>> store = MetricStore(StoreConfig(data_dir=d.name))
    >>> text = exposition(StoreCollector(store)).decode()
    >>> "rankboard_metric_series" in {f.name for f in text_string_to_metric_families(text)}
    True
    >>> store.close()
    >>> d.cleanup()
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.responses import Response
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from rankboard.service.state.batch import RunKey
from rankboard.service.state.store import MetricStore
from rankboard.service.telemetry import TELEMETRY, Histogram, Telemetry

log = logging.getLogger(__name__)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
DEFAULT_MAX_SERIES = 2000
# a run's values (and intervals) are re-read at most this often while it changes
RUN_REFRESH_S = 5.0
_METRIC_LABELS = ["experiment", "arm", "task", "phase", "metric"]


def _histogram(name: str, doc: str, h: Histogram, labels: dict[str, str] | None = None) -> Any:
    fam = HistogramMetricFamily(name, doc, labels=list(labels or {}))
    counts, total = h.snapshot()
    bounds = [*(repr(float(b)) for b in h.buckets), "+Inf"]
    fam.add_metric(list((labels or {}).values()), list(zip(bounds, counts, strict=True)), total)
    return fam


def _dir_bytes(path: Path) -> int:
    total = 0
    try:
        with os.scandir(path) as entries:
            for e in entries:
                try:
                    if e.is_file(follow_symlinks=False):
                        total += e.stat(follow_symlinks=False).st_size
                    elif e.is_dir(follow_symlinks=False):
                        total += _dir_bytes(Path(e.path))
                except OSError:
                    continue
    except OSError:
        return 0
    return total


class StoreCollector(Collector):
    """Collects the service's operations and its runs' metric values at scrape time."""

    def __init__(
        self,
        store: MetricStore,
        max_series: int = DEFAULT_MAX_SERIES,
        telemetry: Telemetry | None = None,
    ) -> None:
        if max_series < 0:
            raise ValueError(f"max_series must be >= 0, got {max_series}")
        self.store = store
        self.max_series = max_series
        self.telemetry = telemetry or TELEMETRY
        self.left_out_total = 0
        self._lock = threading.Lock()
        # run key -> (run version, monotonic time read, [(metric, value, low, high)])
        self._rows: dict[RunKey, tuple[int, float, list[tuple]]] = {}

    # --- metric values ---------------------------------------------------------------
    def _run_rows(self, run: Any) -> list[tuple[str, float | None, float | None, float | None]]:
        key = run.key
        now = time.monotonic()
        hit = self._rows.get(key)
        if hit is not None and (hit[0] == run.version or now - hit[1] < RUN_REFRESH_S):
            return hit[2]
        try:
            rows = self._read_run(run)
        except Exception:  # a run that cannot be read now is retried when it changes
            log.debug("no values for %s", key, exc_info=True)
            rows = []
        self._rows[key] = (run.version, now, rows)
        return rows

    def _read_run(self, run: Any) -> list[tuple[str, float | None, float | None, float | None]]:
        key = run.key
        if key.phase == "eval":
            try:  # the REST snapshot: values and 95 % intervals, cached per state version
                from rankboard.service.state import query

                snap = query.metrics_snapshot(self.store, key, None, query.QueryParams())
                intervals = snap.get("intervals") or {}
                rows = []
                for m, v in snap["metrics"].items():
                    iv = intervals.get(m)
                    rows.append((m, v, iv[0] if iv else None, iv[1] if iv else None))
                return rows
            except Exception:  # fall back to point values
                log.debug("no intervals for %s", key, exc_info=True)
        got = self.store.snapshot(key)
        if got is None:
            return []
        return [(m, v, None, None) for m, v in got[0].metrics.items()]

    def _metric_families(self) -> list[Metric]:
        value = GaugeMetricFamily(
            "rankboard_metric_value",
            "Metric value of a run: eval runs at their latest eval step, train runs decayed",
            labels=_METRIC_LABELS,
        )
        low = GaugeMetricFamily(
            "rankboard_metric_interval_low",
            "Lower bound of the metric's 95 % interval (eval runs, where one exists)",
            labels=_METRIC_LABELS,
        )
        high = GaugeMetricFamily(
            "rankboard_metric_interval_high",
            "Upper bound of the metric's 95 % interval (eval runs, where one exists)",
            labels=_METRIC_LABELS,
        )
        runs = sorted(self.store.runs(), key=lambda r: (-r.updated_at, r.key))
        emitted = left_out = 0
        seen = set()
        with self._lock:
            for run in runs:
                seen.add(run.key)
                if emitted >= self.max_series:
                    # not read at all (the cap bounds the scrape's work too): every
                    # declared metric counts as left out
                    left_out += len(run.metric_keys)
                    continue
                try:
                    rows = self._run_rows(run)
                except Exception:  # a run deleted meanwhile, or failing
                    log.debug("skipping run %s", run.key, exc_info=True)
                    continue
                k = run.key
                for metric, v, lo, hi in rows:
                    if v is None:
                        continue
                    n = 1 + (lo is not None) + (hi is not None)
                    if emitted + n > self.max_series:
                        left_out += 1
                        continue
                    labels = [k.experiment, k.arm, k.task, k.phase, metric]
                    value.add_metric(labels, v)
                    if lo is not None:
                        low.add_metric(labels, lo)
                    if hi is not None:
                        high.add_metric(labels, hi)
                    emitted += n
            for gone in [k for k in self._rows if k not in seen]:
                del self._rows[gone]
            self.left_out_total += left_out
            total = self.left_out_total
        series = GaugeMetricFamily(
            "rankboard_metric_series", "Metric-value series in this scrape (value, low, high)"
        )
        series.add_metric([], emitted)
        cap = GaugeMetricFamily(
            "rankboard_metric_series_cap", "The cap on metric series (--prometheus-max-series)"
        )
        cap.add_metric([], self.max_series)
        dropped = GaugeMetricFamily(
            "rankboard_metric_values_left_out_in_scrape",
            "Metric values (each with its interval bounds) left out of this scrape by the cap",
        )
        dropped.add_metric([], left_out)
        dropped_total = CounterMetricFamily(
            "rankboard_metric_values_left_out",
            "Metric values left out by the cap, summed over scrapes",
        )
        dropped_total.add_metric([], total)
        return [value, low, high, series, cap, dropped, dropped_total]

    # --- operations ------------------------------------------------------------------
    def _operations(self) -> list[Metric]:
        t = self.telemetry
        batches = CounterMetricFamily(
            "rankboard_ingest_batches",
            "Batches received over gRPC by outcome (applied, duplicate, rejected) and"
            " status code of rejections",
            labels=["outcome", "code"],
        )
        for (outcome, code), v in t.batches.items():
            batches.add_metric([outcome, code], v)
        samples = CounterMetricFamily(
            "rankboard_ingest_samples", "Samples applied to metric state", labels=["outcome"]
        )
        got = dict(t.samples.items())
        samples.add_metric(["applied"], got.get(("applied",), 0.0))
        wal = CounterMetricFamily(
            "rankboard_wal_appended_bytes", "Bytes appended to the write-ahead log"
        )
        wal.add_metric([], t.wal_bytes.value)
        streams = GaugeMetricFamily("rankboard_grpc_open_streams", "Open Ingest.Stream calls")
        streams.add_metric([], t.open_streams.value)
        store = self.store
        producers = GaugeMetricFamily(
            "rankboard_producers", "Producers whose last sequence the service keeps"
        )
        producers.add_metric([], len(store.producers))
        runs = list(store.runs())
        run_count = GaugeMetricFamily("rankboard_runs", "Runs held, by phase", labels=["phase"])
        for phase in ("eval", "train"):
            run_count.add_metric([phase], sum(1 for r in runs if r.key.phase == phase))
        experiments = GaugeMetricFamily("rankboard_experiments", "Experiments held")
        experiments.add_metric([], len({r.key.experiment for r in runs}))
        state = GaugeMetricFamily(
            "rankboard_state_bytes",
            "Bytes of state: retained per-sample metric state and fixed state (step windows,"
            " runs, producer entries) in memory, and on disk the write-ahead log, checkpoints"
            " and the history registry",
            labels=["store"],
        )
        state.add_metric(["retained"], float(store.retained_bytes))
        # RELIABILITY: windows, runs and producer entries, charged to the same cap as retained
        state.add_metric(["fixed"], float(store.fixed_bytes))
        data = Path(store.data_dir)
        state.add_metric(["wal"], _dir_bytes(data / "wal"))
        state.add_metric(["checkpoints"], _dir_bytes(data / "checkpoints"))
        registry = sum(
            p.stat().st_size for p in data.glob("registry.sqlite*") if p.is_file()
        )  # the database and its journal
        state.add_metric(["registry"], registry)
        cap = GaugeMetricFamily(
            "rankboard_state_retained_cap_bytes", "Cap on retained state (--max-retained-mb)"
        )
        cap.add_metric([], float(getattr(store, "max_retained_bytes", 0)))
        rest = HistogramMetricFamily(
            "rankboard_rest_request_seconds",
            "REST request duration by method, route template and status class",
            labels=["method", "route", "status"],
        )
        for labels, h in t.rest_requests.items():
            counts, total = h.snapshot()
            bounds = [*(repr(float(b)) for b in h.buckets), "+Inf"]
            rest.add_metric(list(labels), list(zip(bounds, counts, strict=True)), total)
        return [
            batches,
            samples,
            _histogram(
                "rankboard_ack_latency_seconds",
                "Time from a batch's arrival at the store to its durable acknowledgement",
                t.ack_latency,
            ),
            wal,
            _histogram(
                "rankboard_wal_fsync_seconds", "Duration of write-ahead log syncs", t.wal_fsync
            ),
            _histogram("rankboard_checkpoint_seconds", "Duration of checkpoints", t.checkpoint),
            _histogram(
                "rankboard_snapshot_compute_seconds",
                "Duration of metric snapshot computations",
                t.snapshot_compute,
            ),
            rest,
            streams,
            producers,
            run_count,
            experiments,
            state,
            cap,
        ]

    def collect(self) -> Iterator[Metric]:
        """Every family, read now."""
        yield from self._operations()
        yield from self._metric_families()


def exposition(collector: StoreCollector) -> bytes:
    """The Prometheus text exposition of ``collector`` (a registry of its own)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return generate_latest(registry)


class RequestTimer:
    """ASGI middleware: REST request seconds by method, route template and status class.

    The route template (``/v1/experiments/{experiment}``), never the raw path, so the
    label set stays bounded; requests that match no route count as ``other``.
    """

    def __init__(self, app: ASGIApp, telemetry: Telemetry | None = None) -> None:
        self.app = app
        self.telemetry = telemetry or TELEMETRY

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = [500]
        done = [False]

        def observe() -> None:
            done[0] = True
            template = getattr(scope.get("route"), "path", None)
            if template is None:
                static = scope.get("path", "").startswith("/static/")
                template = "/static/{path}" if static else "other"
            self.telemetry.rest_requests.observe(
                (scope["method"], template, f"{status[0] // 100}xx"),
                time.perf_counter() - started,
            )

        async def send_status(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            elif message["type"] == "http.response.body" and not message.get("more_body"):
                observe()  # before the last byte goes out: a client sees its request counted
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            if not done[0]:
                observe()


def add_metrics_route(
    app: FastAPI, collector: StoreCollector, read: Any, *, public: bool = False
) -> None:
    """Serve ``collector``'s exposition as ``GET /metrics`` on ``app`` (behind ``read``
    unless ``public``) and time every REST request."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    deps = [] if public else [read]

    @app.get("/metrics", include_in_schema=True, tags=["operations"], dependencies=deps)
    def prometheus_metrics() -> Response:
        """The service's operations and metric values, Prometheus text format.

        Needs the read token unless the service runs with ``--metrics-public``.
        """
        return Response(generate_latest(registry), media_type=CONTENT_TYPE)

    app.add_middleware(RequestTimer)
