"""The A/B dashboard at ``/`` and the offline API pages ``/docs`` and ``/redoc``.

Everything the browser loads comes from this package (``rankboard/service/rest/static``:
the page, its script and style, and the vendored uPlot, Swagger UI and ReDoc with
their licences, see ``static/vendor/VERSIONS.md``): nothing is fetched from the
network, so the pages work on an offline cluster and from a wheel install.

The static files are public and hold no data. The data comes from the read-token
protected API: the page asks for the token once (kept in the tab's
``sessionStorage``) and sends it as ``Authorization: Bearer`` (never in a URL); the
same holds for ``/openapi.json``, which the ``/docs`` and ``/redoc`` shells fetch with
the token. One data route is added for the page: ``GET
/v1/experiments/{experiment}/histories`` gives every arm's history of every metric of a
task and phase in one response, in columns, thinned to ``max_points`` per series, so
that a page with 50 arms × 20 metrics draws after one request.

Example::

    >>> compact([0.123456789, None, 3.0])
    [0.123457, None, 3.0]
"""

from __future__ import annotations

import json
import logging
import math
import threading
import weakref
from collections import OrderedDict
from importlib import resources
from typing import Annotated, Any, Literal

from fastapi import APIRouter, FastAPI, Query
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field

from rankboard.service.errors import NotFound
from rankboard.service.state import query
from rankboard.service.state.batch import RunKey
from rankboard.service.state.store import MetricStore

log = logging.getLogger(__name__)

STATIC = resources.files("rankboard.service.rest") / "static"
#: significant digits of history values sent to the page (charts need no more)
DIGITS = 6
#: most points per series a caller may ask for
MAX_POINTS = 5000


def static_dir() -> str:
    """The folder of the packaged static files (a real folder: the package is not zipped).

    >>> import os; os.path.isfile(os.path.join(static_dir(), "index.html"))
    True
    """
    return str(STATIC)


def compact(values: list[float | None]) -> list[float | None]:
    """``values`` rounded to :data:`DIGITS` significant digits (None and non-finite: None)."""
    out: list[float | None] = []
    for v in values:
        if v is None or not math.isfinite(v):
            out.append(None)
        elif v == 0:
            out.append(0.0)
        else:
            out.append(round(v, DIGITS - 1 - math.floor(math.log10(abs(v)))))
    return out


def _history_points(
    store: MetricStore, key: RunKey, metric: str, max_points: int
) -> list[dict[str, Any]]:
    """``[{step, value, low, high}]`` from the query layer (eval points with intervals)."""
    return query.history(store, key, metric, max_points)


class HistorySeries(BaseModel):
    arm: str
    metric: str
    steps: list[int]
    values: list[float | None] = Field(description="null where the value is undefined")
    low: list[float | None] | None = Field(description="interval bounds; null: no interval")
    high: list[float | None] | None


class Histories(BaseModel):
    experiment: str
    task: str
    phase: str
    max_points: int
    series: list[HistorySeries]


class _HistoriesCache:
    """The last few ``histories`` answers, valid while no run of theirs changed (a page
    polling every 5 s recomputes only after a batch, not on every refresh)."""

    def __init__(self, size: int = 32) -> None:
        self._lock = threading.Lock()
        self._size = size
        self._items: OrderedDict[tuple, tuple[tuple, dict]] = OrderedDict()

    def get(self, key: tuple, versions: tuple) -> dict | None:
        with self._lock:
            hit = self._items.get(key)
            if hit is None or hit[0] != versions:
                return None
            self._items.move_to_end(key)
            return hit[1]

    def put(self, key: tuple, versions: tuple, value: dict) -> None:
        with self._lock:
            self._items[key] = (versions, value)
            self._items.move_to_end(key)
            while len(self._items) > self._size:
                self._items.popitem(last=False)


_CACHES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def histories(
    store: MetricStore, experiment: str, task: str, phase: str, max_points: int
) -> dict[str, Any]:
    """Every arm's history of every metric of ``task``/``phase``, in columns."""
    runs = [
        r
        for r in store.runs()
        if r.key.experiment == experiment and (r.key.task, r.key.phase) == (task, phase)
    ]
    if not runs:
        raise NotFound(f"experiment {experiment!r} has no {phase} run of task {task!r}")
    cache = _CACHES.setdefault(store, _HistoriesCache())
    key = (experiment, task, phase, max_points)
    versions = tuple((r.key.arm, id(r), r.version) for r in runs)
    hit = cache.get(key, versions)
    if hit is not None:
        return hit
    out = _histories(store, runs, experiment, task, phase, max_points)
    cache.put(key, versions, out)
    return out


def _histories(
    store: MetricStore, runs: list, experiment: str, task: str, phase: str, max_points: int
) -> dict[str, Any]:
    series = []
    for run in runs:
        thinned = _train_histories(store, run, max_points)
        for metric in run.metric_keys:
            if thinned is not None:
                points = [
                    {"step": s, "value": v, "low": None, "high": None}
                    for s, v in thinned.get(metric, [])
                ]
                series.append(_columns(run.key.arm, metric, points))
                continue
            try:
                points = _history_points(store, run.key, metric, max_points)
            except NotFound:  # deleted meanwhile
                continue
            series.append(_columns(run.key.arm, metric, points))
    return {
        "experiment": experiment,
        "task": task,
        "phase": phase,
        "max_points": max_points,
        "series": series,
    }


def _train_histories(
    store: MetricStore, run: Any, max_points: int
) -> dict[str, list[tuple[int, float | None]]] | None:
    """A train run's decayed histories, thinned in SQL; None for eval runs (their points
    carry intervals from the query layer) or a registry without ``histories``."""
    if run.key.phase != "train" or not hasattr(store.registry, "histories"):
        return None
    k = run.key
    return store.registry.histories(
        (k.experiment, k.arm, k.task, k.phase), run.metric_keys, max_points
    )


def _columns(arm: str, metric: str, points: list[dict[str, Any]]) -> dict[str, Any]:
    low = [p.get("low") for p in points]
    high = [p.get("high") for p in points]
    return {
        "arm": arm,
        "metric": metric,
        "steps": [p["step"] for p in points],
        "values": compact([p["value"] for p in points]),
        "low": compact(low) if any(x is not None for x in low) else None,
        "high": compact(high) if any(x is not None for x in high) else None,
    }


def _api_page(div_id: str, bundle: str, init: str, stylesheet: str = "") -> str:
    """An API reference page (Swagger UI, ReDoc): the ``bundle`` script renders the spec
    into ``<div id=div_id>`` with the ``init`` JavaScript, once the page has fetched the
    spec (``rankboardSpec()`` in ``token.js``, which sends the token a user gave)."""
    head = f'<link rel="stylesheet" href="{stylesheet}">\n' if stylesheet else ""
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>rankboard API</title>
{head}<link rel="icon" href="data:,"></head>
<body><div id="{div_id}"></div>
<script src="{bundle}"></script>
<script src="/static/token.js"></script>
<script>
rankboardSpec().then(function (spec) {{
{init}
}});
</script></body></html>
"""


_DOCS_HTML = _api_page(
    "swagger-ui",
    "/static/vendor/swagger-ui/swagger-ui-bundle.js",
    """\
  window.ui = SwaggerUIBundle({
    spec: spec, dom_id: "#swagger-ui", deepLinking: true,
    requestInterceptor: function (req) {
      var t = rankboardToken.get();
      if (t && !req.headers.Authorization) { req.headers.Authorization = "Bearer " + t; }
      return req;
    },
  });""",
    stylesheet="/static/vendor/swagger-ui/swagger-ui.css",
)
_REDOC_HTML = _api_page(
    "redoc",
    "/static/vendor/redoc/redoc.standalone.js",
    '  Redoc.init(spec, {}, document.getElementById("redoc"));',
)


def add_ui_routes(
    app: FastAPI,
    store: MetricStore,
    read: Any,
    *,
    token_required: bool = False,
    docs_public: bool = False,
) -> None:
    """Mount the dashboard, its static files, ``/docs``, ``/redoc``, ``/openapi.json``
    (behind ``read`` unless ``docs_public``) and the dashboard's history route.

    ``token_required`` tells the page (``/dashboard/config.json``, public) to ask for the
    read token before its first data request. The app must be created with
    ``docs_url=None, redoc_url=None, openapi_url=None``.
    """
    app.mount("/static", StaticFiles(directory=static_dir()), name="static")

    @app.get("/dashboard/config.json", include_in_schema=False)
    def dashboard_config() -> dict:
        return {"token_required": token_required}

    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(str(STATIC / "index.html"), media_type="text/html")

    @app.get("/favicon.ico", include_in_schema=False)
    def favicon() -> Response:
        return Response(status_code=204)

    @app.get(
        "/openapi.json",
        include_in_schema=False,
        dependencies=[] if docs_public else [read],
    )
    def openapi() -> JSONResponse:
        return JSONResponse(app.openapi())

    @app.get("/docs", include_in_schema=False)
    def docs() -> HTMLResponse:
        return HTMLResponse(_DOCS_HTML)

    @app.get("/redoc", include_in_schema=False)
    def redoc() -> HTMLResponse:
        return HTMLResponse(_REDOC_HTML)

    router = APIRouter(prefix="/v1/experiments", tags=["dashboard"], dependencies=[read])

    @router.get("/{experiment}/histories", response_model=Histories)
    async def get_histories(
        experiment: str,
        task: Annotated[str, Query(min_length=1, max_length=128)],
        phase: Literal["train", "eval"] = "eval",
        max_points: Annotated[int, Query(ge=2, le=MAX_POINTS)] = 500,
    ) -> Response:
        """Every arm's history of every metric of one task and phase, for charts.

        Columns per (arm, metric): ``steps``, ``values`` and, where intervals exist,
        ``low`` / ``high`` (else null); at most ``max_points`` points per series, evenly
        thinned, first and last kept; values to 6 significant digits.
        """
        body = await run_in_threadpool(histories, store, experiment, task, phase, max_points)
        # built as the model says (NaN already None): serialized directly, which is
        # several times faster than FastAPI's encoder on 1,000 series
        return Response(
            json.dumps(body, allow_nan=False, separators=(",", ":")), media_type="application/json"
        )

    app.include_router(router)
