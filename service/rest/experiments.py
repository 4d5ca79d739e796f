"""Routes of the experiments resource: list, detail, delete."""

from __future__ import annotations

from fastapi import APIRouter

from rankboard.service.rest import models
from rankboard.service.rest.deps import StoreDep
from rankboard.service.state import query

__all__ = ["admin", "router"]

router = APIRouter(prefix="/v1/experiments", tags=["experiments"])
admin = APIRouter(prefix="/v1/experiments", tags=["experiments"])


@router.get("", response_model=models.ExperimentList)
def list_experiments(store: StoreDep) -> dict:
    """Every experiment with its arms, tasks, phases, samples and last update."""
    return {"experiments": query.experiments(store)}


@router.get("/{experiment}", response_model=models.ExperimentDetail)
def get_experiment(experiment: str, store: StoreDep) -> dict:
    """One experiment and each of its runs (steps, metrics, declaration, memory)."""
    return query.experiment_detail(store, experiment)


@admin.delete("/{experiment}", response_model=models.Deleted)
def delete_experiment(experiment: str, store: StoreDep) -> dict:
    """Delete an experiment's state and history.

    Needs the write token when one is set, else the read token when one is set.
    """
    deleted = store.delete_experiment(experiment)
    query.forget(store, experiment)
    return {"experiment": experiment, "runs_deleted": deleted}
