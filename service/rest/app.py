"""The FastAPI app: an app factory taking the store and the tokens.

Routers, one module a resource, each a few lines over the query layer:
:mod:`~rankboard.service.rest.experiments` (``/v1/experiments``, ``/{experiment}``,
``DELETE /{experiment}`` with the write token), :mod:`~rankboard.service.rest.results`
(``.../arms/{arm}/metrics``, ``.../compare``, ``.../arms/{arm}/history``),
:mod:`~rankboard.service.rest.dashboard` (``/``, ``/docs``, ``/redoc``, histories) and
:mod:`~rankboard.service.rest.prometheus` (``/metrics``); ``/healthz`` here. Domain errors
map to HTTP statuses in one place, here.
"""

from __future__ import annotations

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse

from rankboard.service.errors import ServiceError
from rankboard.service.rest import experiments, models, results
from rankboard.service.rest.dashboard import add_ui_routes
from rankboard.service.rest.deps import bearer
from rankboard.service.rest.prometheus import StoreCollector, add_metrics_route
from rankboard.service.state.store import MetricStore

__all__ = ["create_app"]

_STATUS = {"NOT_FOUND": 404, "INVALID_ARGUMENT": 422, "UNAVAILABLE": 503}


def create_app(
    store: MetricStore,
    read_token: str | None = None,
    write_token: str | None = None,
    *,
    metrics_public: bool = False,
    prometheus_max_series: int = 2000,
) -> FastAPI:
    """The REST app over ``store``; ``read_token`` guards reads, ``write_token`` deletes.

    The read token also guards ``/openapi.json`` and ``/metrics`` (unless
    ``metrics_public``); the dashboard's and the API pages' static files are public and
    hold no data (see :mod:`rankboard.service.rest.dashboard`).

    With a read token and no write token, deletes need the read token: a service whose
    reads are guarded never lets an anonymous caller delete.
    """
    app = FastAPI(
        title="rankboard",
        version="1",
        description="Exact metrics of ranking-model experiments: snapshots, histories and"
        " arm-versus-arm comparisons.",
        # served by rankboard.service.rest.dashboard: packaged assets, token-protected schema
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    app.state.store = store
    read = Depends(bearer(read_token, "read"))
    write = Depends(
        bearer(write_token, "write")
        if write_token or not read_token
        else bearer(read_token, "read")
    )

    @app.exception_handler(ServiceError)
    async def _service_error(request: Request, err: ServiceError) -> JSONResponse:
        return JSONResponse({"detail": str(err)}, status_code=_STATUS.get(err.code, 500))

    @app.get("/healthz", response_model=models.Health, tags=["health"])
    def healthz() -> models.Health:
        return models.Health(status="ok")

    app.include_router(experiments.router, dependencies=[read])
    app.include_router(results.router, dependencies=[read])
    app.include_router(experiments.admin, dependencies=[write])
    # dashboard, /docs, /redoc, /openapi.json (packaged assets) and /metrics
    add_ui_routes(app, store, read, token_required=read_token is not None)
    collector = StoreCollector(store, prometheus_max_series)
    add_metrics_route(app, collector, read, public=metrics_public)
    return app
