"""The FastAPI app: an app factory taking the store and the tokens.

Routes (OpenAPI at /docs): ``/healthz``; ``/v1/experiments``;
``/v1/experiments/{experiment}``; ``.../arms/{arm}/metrics``;
``.../arms/{arm}/history``; ``.../compare``; ``DELETE /v1/experiments/{experiment}``
(write token). Domain errors map to HTTP statuses in one place.
"""

from __future__ import annotations

import hmac
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, FastAPI, Header, HTTPException, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from rankboard.service.errors import NotFound, ServiceError
from rankboard.service.rest import models
from rankboard.service.rest.dashboard import add_ui_routes
from rankboard.service.rest.prometheus import add_metrics_route
from rankboard.service.state import query
from rankboard.service.state.batch import RunKey
from rankboard.service.state.query import QueryParams
from rankboard.service.state.store import MetricStore

_STATUS = {"NOT_FOUND": 404, "INVALID_ARGUMENT": 422, "UNAVAILABLE": 503}
Phase = Literal["train", "eval"]
NameParam = Annotated[str, Query(min_length=1, max_length=128)]


def query_params(
    alpha: Annotated[float, Query(gt=0, le=0.5, description="1 - confidence level")] = 0.05,
    cluster: Annotated[
        str | None,
        Query(
            max_length=128,
            description="grouping-key column whose values are the independent units"
            " (default: the run's only key column, if it has exactly one); `none`:"
            " independent samples",
        ),
    ] = None,
    sequential: Annotated[
        bool, Query(description="always-valid confidence sequences (safe to peek)")
    ] = False,
    horizon: Annotated[
        int | None,
        Query(ge=1, description="planned independent units, tunes sequential intervals"),
    ] = None,
    fresh: bool = False,
) -> QueryParams:
    return QueryParams(alpha, cluster, sequential, horizon, fresh).checked()


Params = Annotated[QueryParams, Depends(query_params)]


def _bearer_dependency(token: str | None, what: str):
    # compared as bytes: a str compare_digest raises on non-ASCII (HTTP 500, issue 15);
    # headers arrive decoded as latin-1, so encoding them back gives the bytes sent
    expected = f"Bearer {token}".encode() if token else None

    async def check(authorization: Annotated[str | None, Header()] = None) -> None:
        if expected is None:
            return
        given = authorization.encode("latin-1", "replace") if authorization is not None else b""
        if authorization is None or not hmac.compare_digest(given, expected):
            raise HTTPException(
                401, f"missing or wrong {what} token", headers={"WWW-Authenticate": "Bearer"}
            )

    return check


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
    read = Depends(_bearer_dependency(read_token, "read"))
    write = Depends(
        _bearer_dependency(write_token, "write")
        if write_token or not read_token
        else _bearer_dependency(read_token, "read")
    )

    @app.exception_handler(ServiceError)
    async def _service_error(request: Request, err: ServiceError) -> JSONResponse:
        return JSONResponse({"detail": str(err)}, status_code=_STATUS.get(err.code, 500))

    @app.get("/healthz", response_model=models.Health, tags=["health"])
    def healthz() -> models.Health:
        return models.Health(status="ok")

    router = APIRouter(prefix="/v1/experiments", tags=["experiments"], dependencies=[read])

    def summaries() -> dict[str, list]:
        grouped: dict[str, list] = {}
        for run in store.runs():
            grouped.setdefault(run.key.experiment, []).append(run)
        return grouped

    def summary(name: str, runs: list) -> dict:
        return {
            "name": name,
            "arms": sorted({r.key.arm for r in runs}),
            "tasks": sorted({r.key.task for r in runs}),
            "phases": sorted({r.key.phase for r in runs}),
            "samples": sum(r.samples for r in runs),
            "updated_at": max(r.updated_at for r in runs),
        }

    @router.get("", response_model=models.ExperimentList)
    def list_experiments() -> dict:
        return {"experiments": [summary(n, r) for n, r in sorted(summaries().items())]}

    @router.get("/{experiment}", response_model=models.ExperimentDetail)
    def get_experiment(experiment: str) -> dict:
        runs = summaries().get(experiment)
        if not runs:
            raise NotFound(f"experiment {experiment!r} not found")
        out = summary(experiment, runs)
        out["runs"] = [
            {
                "arm": r.key.arm,
                "task": r.key.task,
                "phase": r.key.phase,
                "samples": r.samples,
                "steps": sorted(r.windows) if r.key.phase == "eval" else [],
                "last_step": r.last_step,
                "metrics": r.metric_keys,
                "declaration": r.declaration,
                "declared": r.declared,
                "retained_bytes": round(r.retained_bytes),
            }
            for r in runs
        ]
        return out

    @router.get("/{experiment}/arms/{arm}/metrics", response_model=models.MetricsSnapshot)
    async def get_metrics(
        experiment: str,
        arm: str,
        task: NameParam,
        q: Params,
        phase: Phase = "eval",
        step: Annotated[int | None, Query(ge=0)] = None,
    ) -> dict:
        """Metric values of one arm with standard errors and intervals; eval gives the
        latest step unless ``step`` is set (train: decayed values, no interval).

        Values come from a cache refreshed when state changed; ``stale`` says a
        newer one is being computed; ``fresh=true`` waits for it.
        """
        key = RunKey(experiment, arm, task, phase)
        return await run_in_threadpool(query.metrics_snapshot, store, key, step, q)

    @router.get("/{experiment}/compare", response_model=models.Comparison)
    async def compare(
        experiment: str,
        task: NameParam,
        baseline: NameParam,
        q: Params,
        phase: Phase = "eval",
        step: Annotated[int | None, Query(ge=0)] = None,
    ) -> dict:
        """Every arm against the baseline arm: values, intervals, deltas with intervals,
        p-values and verdicts (paired when both arms carry the same sample ids).

        Eval arms are compared at one step: ``step``, or the latest every arm has.
        """
        return await run_in_threadpool(
            query.compare, store, experiment, task, baseline, q, phase, step
        )

    @router.get("/{experiment}/arms/{arm}/history", response_model=models.History)
    def history(
        experiment: str,
        arm: str,
        task: NameParam,
        metric: NameParam,
        phase: Phase = "eval",
        max_points: Annotated[int | None, Query(ge=2, le=100_000)] = None,
    ) -> dict:
        """A metric's value over steps: decay steps (train) or eval steps (eval, with the
        95 % interval of each step); ``max_points`` thins long histories evenly."""
        key = RunKey(experiment, arm, task, phase)
        return {
            "experiment": experiment,
            "arm": arm,
            "task": task,
            "phase": phase,
            "metric": metric,
            "points": query.history(store, key, metric, max_points),
        }

    app.include_router(router)

    @app.delete(
        "/v1/experiments/{experiment}",
        response_model=models.Deleted,
        tags=["experiments"],
        dependencies=[write],
    )
    def delete_experiment(experiment: str) -> dict:
        """Delete an experiment's state and history.

        Needs the write token when one is set, else the read token when one is set.
        """
        deleted = store.delete_experiment(experiment)
        query.forget(store, experiment)
        return {"experiment": experiment, "runs_deleted": deleted}

    # dashboard, /docs, /redoc, /openapi.json and /metrics (DASHBOARD)
    add_ui_routes(app, store, read, token_required=read_token is not None)
    add_metrics_route(app, store, read, public=metrics_public, max_series=prometheus_max_series)
    return app
