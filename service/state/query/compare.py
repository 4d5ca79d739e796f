"""Arm-versus-baseline comparisons with deltas, intervals, p-values and verdicts."""

from __future__ import annotations

from typing import Any

from rankboard.service.errors import NotFound
from rankboard.service.metrics import stats
from rankboard.service.state.query.arms import _finite, _pair, arm_data, groups_of, interval_fields
from rankboard.service.state.query.params import QueryParams
from rankboard.service.state.store import MetricStore

__all__ = ["common_step", "compare"]


def _runs_of(store: MetricStore, experiment: str, task: str, phase: str) -> list:
    runs = [r for r in store.runs() if r.key.experiment == experiment]
    if not runs:
        raise NotFound(f"experiment {experiment!r} not found")
    chosen = [r for r in runs if (r.key.task, r.key.phase) == (task, phase)]
    if not chosen:
        tasks = sorted({r.key.task for r in runs if r.key.phase == phase})
        raise NotFound(
            f"experiment {experiment!r} has no {phase} run of task {task!r}"
            f" ({phase} tasks: {', '.join(tasks) or 'none'}; names are case-sensitive)"
        )
    return chosen


def common_step(steps_by_arm: dict[str, list[int]], step: int | None) -> tuple[int, str | None]:
    """The eval step to compare: ``step`` (every arm must have it) or the latest that
    every arm has; and a note when some arm has later steps.

    >>> common_step({"a": [1, 2], "b": [1]}, None)
    (1, 'compared at step 1, the latest step every arm has; later steps: a: 2')
    >>> common_step({"a": [1, 2], "b": [1, 2]}, None)
    (2, None)
    """
    if step is not None:
        for arm, steps in sorted(steps_by_arm.items()):
            if step not in steps:
                raise NotFound(
                    f"arm {arm!r} has no eval step {step} (its steps: {_steps_text(steps)})"
                )
        return step, None
    shared = set.intersection(*(set(s) for s in steps_by_arm.values()))
    if not shared:
        detail = "; ".join(f"{a}: {_steps_text(s)}" for a, s in sorted(steps_by_arm.items()))
        raise NotFound(f"the arms share no eval step ({detail}); pass step= to choose one")
    chosen = max(shared)
    later = {a: [s for s in steps if s > chosen] for a, steps in steps_by_arm.items()}
    later = {a: s for a, s in later.items() if s}
    note = None
    if later:
        parts = "; ".join(f"{a}: {_steps_text(s)}" for a, s in sorted(later.items()))
        note = f"compared at step {chosen}, the latest step every arm has; later steps: {parts}"
    return chosen, note


def _steps_text(steps: list[int]) -> str:
    steps = sorted(steps)
    if len(steps) > 8:
        return ", ".join(map(str, steps[:3])) + f", ... ({len(steps)} steps), {steps[-1]}"
    return ", ".join(map(str, steps)) or "none"


def compare(
    store: MetricStore,
    experiment: str,
    task: str,
    baseline: str,
    params: QueryParams,
    phase: str = "eval",
    step: int | None = None,
) -> dict[str, Any]:
    """The body of ``GET /v1/experiments/{e}/compare``: every arm against ``baseline``."""
    params.checked()
    runs = _runs_of(store, experiment, task, phase)
    arms = sorted(r.key.arm for r in runs)
    if baseline not in arms:
        raise NotFound(
            f"baseline arm {baseline!r} has no {phase} run of task {task!r}"
            f" (arms: {', '.join(arms)})"
        )
    note = None
    if phase == "eval":
        step, note = common_step({r.key.arm: sorted(r.windows) for r in runs}, step)
    data = {r.key.arm: arm_data(store, r.key, step, params) for r in runs}
    base = data[baseline]
    clusters = {d.cluster for d in data.values()}
    out_arms: dict[str, Any] = {}
    for arm in arms:
        d = data[arm]
        fields = interval_fields(d, params)
        delta, rel = {}, {}
        d_int: dict[str, list[float] | None] = {}
        d_se: dict[str, float | None] = {}
        p_values: dict[str, float | None] = {}
        verdicts: dict[str, str | None] = {}
        paired = False
        paired_samples = 0
        pairing = "baseline" if arm == baseline else "unpaired: no statistics"
        for name, v in d.values.items():
            b = base.values.get(name)
            dv = None if v is None or b is None else v - b
            delta[name] = dv
            rel[name] = None if dv is None or not b else dv / abs(b)
            d_int[name] = d_se[name] = p_values[name] = verdicts[name] = None
            if arm == baseline:
                continue
            sa, sb = (base.stats or {}).get(name), (d.stats or {}).get(name)
            if sa is None or sb is None:
                verdicts[name] = "inconclusive" if phase == "eval" else None
                continue
            res = stats.compare_arms(
                sa[0],
                sb[0],
                alpha=params.alpha,
                sequential=params.sequential,
                horizon=params.horizon,
                higher_is_better=sb[1],
            )
            d_int[name] = _pair((res.low, res.high)) if res.low is not None else None
            d_se[name] = _finite(res.se)
            p_values[name] = _finite(res.p_value)
            verdicts[name] = res.verdict
            fields["methods"][name] = res.method
            paired, paired_samples, pairing = res.paired, res.paired_samples, res.pairing
        out_arms[arm] = {
            "step": d.step,
            "samples": d.samples,
            "positives": d.positives,
            "negatives": d.negatives,
            "groups": groups_of(d),
            "metrics": d.values,
            "delta": delta,
            "relative_delta": rel,
            **fields,
            "delta_intervals": d_int,
            "delta_standard_errors": d_se,
            "p_values": p_values,
            "verdicts": verdicts,
            "paired": paired,
            "paired_samples": paired_samples,
            "pairing": pairing,
            "cluster": d.cluster,
            "stale": d.stale,
            "computed_at": d.computed_at,
        }
    return {
        "experiment": experiment,
        "task": task,
        "phase": phase,
        "baseline": baseline,
        "step": step if phase == "eval" else None,
        "note": note,
        "alpha": params.alpha,
        "sequential": params.sequential,
        "horizon": params.horizon,
        "cluster": clusters.pop() if len(clusters) == 1 else None,
        "arms": out_arms,
    }
