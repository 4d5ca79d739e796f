"""The FastAPI app: an app factory taking the store and the tokens.

Routes (OpenAPI at /docs): ``/healthz``; ``/v1/experiments``;
``/v1/experiments/{experiment}``; ``.../arms/{arm}/metrics``;
``.../arms/{arm}/history``; ``.../compare``; ``DELETE /v1/experiments/{experiment}``
(write token). Domain errors map to HTTP statuses in one place.
"""

from __future__ import annotations

import hmac
import json
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, FastAPI, Header, HTTPException, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response

from rankboard.service.errors import NotFound, ServiceError
from rankboard.service.rest import models
from rankboard.service.state.batch import RunKey
from rankboard.service.state.store import MetricStore

_STATUS = {"NOT_FOUND": 404, "INVALID_ARGUMENT": 422, "UNAVAILABLE": 503}
Phase = Literal["train", "eval"]
NameParam = Annotated[str, Query(min_length=1, max_length=128)]


def _json(body: dict) -> Response:
    """``body`` as JSON, as built (the hot polling routes build exactly their declared
    model: skipping FastAPI's re-validation halves their cost; NaN is already None)."""
    return Response(json.dumps(body, allow_nan=False), media_type="application/json")


def _bearer_dependency(token: str | None, what: str):
    expected = f"Bearer {token}" if token else None

    async def check(authorization: Annotated[str | None, Header()] = None) -> None:
        if expected is None:
            return
        if authorization is None or not hmac.compare_digest(authorization, expected):
            raise HTTPException(
                401, f"missing or wrong {what} token", headers={"WWW-Authenticate": "Bearer"}
            )

    return check


def create_app(
    store: MetricStore, read_token: str | None = None, write_token: str | None = None
) -> FastAPI:
    """The REST app over ``store``; ``read_token`` guards reads, ``write_token`` deletes.

    With a read token and no write token, deletes need the read token: a service whose
    reads are guarded never lets an anonymous caller delete.
    """
    app = FastAPI(
        title="rankboard",
        version="1",
        description="Exact metrics of ranking-model experiments: snapshots, histories and"
        " arm-versus-arm comparisons.",
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

    def snapshot_dict(key: RunKey, step: int | None, fresh: bool, wait: bool = True) -> dict | None:
        got = store.snapshot(key, step, fresh=fresh, wait=wait)
        if got is None:
            return None
        snap, stale = got
        run = store.run(key)
        return {
            "experiment": key.experiment,
            "arm": key.arm,
            "task": key.task,
            "phase": key.phase,
            "step": snap.step if key.phase == "eval" else run.last_step,
            "samples": snap.samples,
            "metrics": snap.metrics,
            "extras": snap.extras,
            "version": snap.version,
            "stale": stale,
            "computed_at": snap.computed_at,
        }

    async def snapshot_async(key: RunKey, step: int | None, fresh: bool) -> dict:
        # a cached snapshot is answered on the event loop (no thread hop, no lock);
        # computing one goes to the thread pool
        out = snapshot_dict(key, step, fresh, wait=False)
        if out is None:
            out = await run_in_threadpool(snapshot_dict, key, step, fresh)
        return out

    @router.get("/{experiment}/arms/{arm}/metrics", response_model=models.MetricsSnapshot)
    async def get_metrics(
        experiment: str,
        arm: str,
        task: NameParam,
        phase: Phase = "eval",
        step: Annotated[int | None, Query(ge=0)] = None,
        fresh: bool = False,
    ) -> dict:
        """Metric values of one arm; eval gives the latest step unless ``step`` is set.

        Values come from a cache refreshed when state changed; ``stale`` says a
        newer one is being computed; ``fresh=true`` waits for it.
        """
        return _json(await snapshot_async(RunKey(experiment, arm, task, phase), step, fresh))

    @router.get("/{experiment}/compare", response_model=models.Comparison)
    async def compare(
        experiment: str,
        task: NameParam,
        baseline: NameParam,
        phase: Phase = "eval",
        step: Annotated[int | None, Query(ge=0)] = None,
        fresh: bool = False,
    ) -> dict:
        """Every arm's metrics side by side, with each arm's delta from the baseline arm."""
        runs = [
            r for r in summaries().get(experiment, []) if (r.key.task, r.key.phase) == (task, phase)
        ]
        if not runs:
            raise NotFound(f"experiment {experiment!r} has no {phase} run of task {task!r}")
        arms = {r.key.arm: await snapshot_async(r.key, step, fresh) for r in runs}
        if baseline not in arms:
            raise NotFound(
                f"baseline arm {baseline!r} has no {phase} run of task {task!r}"
                f" (arms: {', '.join(sorted(arms))})"
            )
        base = arms[baseline]["metrics"]
        out = {}
        for arm, snap in sorted(arms.items()):
            delta, rel = {}, {}
            for k, v in snap["metrics"].items():
                b = base.get(k)
                delta[k] = None if v is None or b is None else v - b
                rel[k] = None if delta[k] is None or not b else delta[k] / abs(b)
            out[arm] = {
                "step": snap["step"],
                "samples": snap["samples"],
                "metrics": snap["metrics"],
                "delta": delta,
                "relative_delta": rel,
                "stale": snap["stale"],
            }
        return _json(
            {
                "experiment": experiment,
                "task": task,
                "phase": phase,
                "baseline": baseline,
                "arms": out,
            }
        )

    @router.get("/{experiment}/arms/{arm}/history", response_model=models.History)
    def history(
        experiment: str,
        arm: str,
        task: NameParam,
        metric: NameParam,
        phase: Phase = "eval",
    ) -> dict:
        """A metric's value over steps: decay steps (train) or eval steps (eval)."""
        key = RunKey(experiment, arm, task, phase)
        points = store.history(key, metric)
        return {
            "experiment": experiment,
            "arm": arm,
            "task": task,
            "phase": phase,
            "metric": metric,
            "points": [{"step": s, "value": v} for s, v in points],
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
        return {"experiment": experiment, "runs_deleted": store.delete_experiment(experiment)}

    return app
