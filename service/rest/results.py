"""Routes of an experiment's results: an arm's metrics, the comparison, histories.

Each route is a call into the query layer (:mod:`rankboard.service.state.query`),
run in the thread pool (statistics of a large arm take CPU), returning the response
model's fields.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import APIRouter, Depends, Query
from fastapi.concurrency import run_in_threadpool

from rankboard.service.rest import models
from rankboard.service.rest.deps import NameParam, Params, Phase, StoreDep
from rankboard.service.state import query
from rankboard.service.state.batch import RunKey

__all__ = ["router"]

router = APIRouter(prefix="/v1/experiments", tags=["results"])
Step = Annotated[int | None, Query(ge=0, description="eval step (default: the latest)")]


@dataclass(frozen=True)
class At:
    """The ``phase`` and eval ``step`` query parameters of a snapshot or comparison."""

    phase: Phase = "eval"
    step: Step = None


AtDep = Annotated[At, Depends()]


@router.get("/{experiment}/arms/{arm}/metrics", response_model=models.MetricsSnapshot)
async def get_metrics(
    experiment: str, arm: str, task: NameParam, at: AtDep, q: Params, store: StoreDep
) -> dict:
    """Metric values of one arm with standard errors and intervals; eval gives the
    latest step unless ``step`` is set (train: decayed values, no interval).

    Values come from a cache refreshed when state changed; ``stale`` says a
    newer one is being computed; ``fresh=true`` waits for it.
    """
    key = RunKey(experiment, arm, task, at.phase)
    return await run_in_threadpool(query.metrics_snapshot, store, key, at.step, q)


@router.get("/{experiment}/compare", response_model=models.Comparison)
async def compare(
    experiment: str, task: NameParam, baseline: NameParam, at: AtDep, q: Params, store: StoreDep
) -> dict:
    """Every arm against the baseline arm: values, intervals, deltas with intervals,
    p-values and verdicts (paired when both arms carry the same sample ids).

    Eval arms are compared at one step: ``step``, or the latest every arm has.
    """
    return await run_in_threadpool(
        query.compare, store, experiment, task, baseline, q, at.phase, at.step
    )


@router.get("/{experiment}/arms/{arm}/history", response_model=models.History)
async def history(
    experiment: str,
    arm: str,
    task: NameParam,
    metric: NameParam,
    store: StoreDep,
    phase: Phase = "eval",
    max_points: Annotated[int | None, Query(ge=2, le=100_000)] = None,
) -> dict:
    """A metric's value over steps: decay steps (train) or eval steps (eval, with the
    95 % interval of each step); ``max_points`` thins long histories evenly."""
    key = RunKey(experiment, arm, task, phase)
    points = await run_in_threadpool(query.history, store, key, metric, max_points)
    return {
        "experiment": experiment,
        "arm": arm,
        "task": task,
        "phase": phase,
        "metric": metric,
        "points": points,
    }
