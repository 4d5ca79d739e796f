"""Experiment summaries and details."""

from __future__ import annotations

from typing import Any

from rankboard.service.errors import NotFound
from rankboard.service.state.store import MetricStore

__all__ = ["experiment_detail", "experiments"]


def _by_experiment(store: MetricStore) -> dict[str, list]:
    grouped: dict[str, list] = {}
    for run in store.runs():
        grouped.setdefault(run.key.experiment, []).append(run)
    return grouped


def _summary(name: str, runs: list) -> dict[str, Any]:
    return {
        "name": name,
        "arms": sorted({r.key.arm for r in runs}),
        "tasks": sorted({r.key.task for r in runs}),
        "phases": sorted({r.key.phase for r in runs}),
        "samples": sum(r.samples for r in runs),
        "updated_at": max(r.updated_at for r in runs),
    }


def experiments(store: MetricStore) -> list[dict[str, Any]]:
    """Every experiment: arms, tasks, phases, samples, last update (unix seconds)."""
    return [_summary(name, runs) for name, runs in sorted(_by_experiment(store).items())]


def experiment_detail(store: MetricStore, experiment: str) -> dict[str, Any]:
    """One experiment's summary and its runs."""
    runs = _by_experiment(store).get(experiment)
    if not runs:
        raise NotFound(f"experiment {experiment!r} not found")
    out = _summary(experiment, runs)
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
            "updated_at": r.updated_at,
        }
        for r in runs
    ]
    return out
