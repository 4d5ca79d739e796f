"""``rankboard compare``: an A/B comparison from the REST API, as a table.

It calls ``GET /v1/experiments/{e}/compare`` and prints, per metric and arm, the
estimate, its interval, the difference from the baseline (Δ), the interval of
Δ, the p-value and the verdict. Fields the service does not return (an older
service, or metrics without an interval) show as ``-``, and columns that no
arm has are left out, so the table degrades to point values. ``--json`` prints
the REST body as it came.

Only the standard library is used here (``urllib``, imported when a request is made),
so the command answers fast.

>>> body = {"experiment": "e", "task": "ctr", "phase": "eval", "baseline": "A",
...         "arms": {"A": {"step": 5, "samples": 10, "metrics": {"auc": 0.7}},
...                  "B": {"step": 5, "samples": 12, "metrics": {"auc": 0.72},
...                        "delta": {"auc": 0.02}}}}
>>> print(format_compare(body))
experiment e, task ctr (eval), baseline A, step 5
  A: 10 samples
  B: 12 samples
<BLANKLINE>
metric  arm  estimate          Δ
------  ---  --------  ---------
auc     A    0.700000          -
auc     B    0.720000  +0.020000
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from typing import Any

from rankboard.service.argtypes import float_where

__all__ = ["add_compare_parser", "compare", "fetch_compare", "format_compare"]


class CompareError(RuntimeError):
    """The comparison could not be fetched; the message says why."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


_alpha = float_where(lambda a: 0 < a <= 0.5, "in (0, 0.5]")


def add_compare_parser(sub: argparse._SubParsersAction) -> None:
    """Register the ``compare`` subcommand."""
    p = sub.add_parser(
        "compare",
        help="compare the arms of an experiment (REST), as a table",
        description="Compare every arm of an experiment with a baseline arm: estimate,"
        " interval, delta, delta interval, p-value and verdict per metric.",
    )
    p.add_argument(
        "--url",
        "--target-http",
        dest="url",
        default=os.environ.get("RANKBOARD_URL", "http://127.0.0.1:8000"),
        help="the service's REST base URL (default $RANKBOARD_URL or http://127.0.0.1:8000)",
    )
    p.add_argument("--experiment", required=True)
    p.add_argument("--task", required=True)
    p.add_argument("--baseline", required=True, help="the arm the others are compared with")
    p.add_argument("--phase", default="eval", choices=["eval", "train"])
    p.add_argument(
        "--alpha", type=_alpha, default=0.05, help="1 - confidence level (default 0.05: 95 %%)"
    )
    p.add_argument(
        "--sequential",
        action="store_true",
        help="always-valid intervals and p-values (safe to look at again and again)",
    )
    p.add_argument("--horizon", type=int, default=None, help="planned units for --sequential")
    p.add_argument(
        "--cluster",
        default=None,
        help="grouping-key column whose values are the independent units, or none"
        " (default: the service's choice)",
    )
    p.add_argument("--step", type=int, default=None, help="eval step (default: latest common)")
    p.add_argument("--json", action="store_true", help="print the REST body as JSON")
    p.add_argument("--token", default=None, help="read token (or RANKBOARD_READ_TOKEN)")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds to wait (default 120)")
    p.set_defaults(func=compare)


def fetch_compare(
    url: str,
    experiment: str,
    *,
    task: str,
    baseline: str,
    phase: str = "eval",
    params: dict[str, Any] | None = None,
    token: str | None = None,
    timeout: float = 120.0,
) -> dict[str, Any]:
    """The body of ``GET {url}/v1/experiments/{experiment}/compare`` (fresh values).

    Raises :class:`CompareError` with the service's message on an HTTP error,
    and with "cannot reach the service" when nothing answers.
    """
    import urllib.error
    import urllib.parse
    import urllib.request

    query = {"task": task, "baseline": baseline, "phase": phase, "fresh": "true"}
    for k, v in (params or {}).items():
        if v is not None:
            query[k] = str(v).lower() if isinstance(v, bool) else str(v)
    base = url.rstrip("/")
    if "://" not in base:
        base = "http://" + base
    full = (
        f"{base}/v1/experiments/{urllib.parse.quote(experiment, safe='')}/compare?"
        + urllib.parse.urlencode(query)
    )
    request = urllib.request.Request(full, headers={"Accept": "application/json"})
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as err:
        try:
            detail = json.loads(err.read()).get("detail", err.reason)
        except (ValueError, AttributeError):
            detail = err.reason
        if err.code == 401:
            detail = f"{detail} (give --token or set RANKBOARD_READ_TOKEN)"
        if isinstance(detail, list):  # FastAPI's validation errors
            detail = "; ".join(
                f"{'.'.join(str(x) for x in d.get('loc', [])[1:])}: {d.get('msg')}" for d in detail
            )
        raise CompareError(f"HTTP {err.code}: {detail}") from None
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", err)
        raise CompareError(f"cannot reach the service at {base} ({reason})", 2) from None


def _num(x: Any) -> float | None:
    return x if isinstance(x, int | float) and math.isfinite(x) else None


def _f(x: Any, signed: bool = False) -> str:
    v = _num(x)
    if v is None:
        return "-"
    return f"{v:+.6f}" if signed else f"{v:.6f}"


def _interval(x: Any, signed: bool = False) -> str:
    if not isinstance(x, list | tuple) or len(x) != 2 or any(_num(v) is None for v in x):
        return "-"
    fmt = "{:+.6f}" if signed else "{:.6f}"
    return f"[{fmt.format(x[0])}, {fmt.format(x[1])}]"


def _p(x: Any) -> str:
    v = _num(x)
    if v is None:
        return "-"
    return "<1e-4" if v < 1e-4 else f"{v:.4f}"


def _get(arm: dict[str, Any], field: str, metric: str) -> Any:
    values = arm.get(field)
    return values.get(metric) if isinstance(values, dict) else None


_COLUMNS = [
    # (header, field, formatter)
    ("estimate", "metrics", _f),
    ("interval", "intervals", _interval),
    ("Δ", "delta", lambda x: _f(x, True)),
    ("Δ interval", "delta_intervals", lambda x: _interval(x, True)),
    ("p", "p_values", _p),
    ("verdict", "verdicts", lambda x: x if isinstance(x, str) else "-"),
]


def format_compare(body: dict[str, Any]) -> str:
    """A readable table of a ``/compare`` body (see the module example)."""
    arms: dict[str, dict[str, Any]] = body.get("arms", {})
    baseline = body.get("baseline")
    order = sorted(arms, key=lambda a: (a != baseline, a))
    head = (
        f"experiment {body.get('experiment')}, task {body.get('task')} ({body.get('phase')}),"
        f" baseline {baseline}"
    )
    step = body.get("step")
    if step is None and order:
        steps = {arms[a].get("step") for a in order}
        step = steps.pop() if len(steps) == 1 else None
    if step is not None:
        head += f", step {step}"
    settings = []
    if body.get("alpha") is not None:
        level = (1 - body["alpha"]) * 100
        settings.append(f"{level:g} % intervals (alpha {body['alpha']:g})")
    if body.get("sequential") is not None:
        settings.append("sequential (always valid)" if body["sequential"] else "fixed horizon")
    if "cluster" in body:
        settings.append(f"cluster {body['cluster'] or 'none (independent samples)'}")
    lines = [head]
    if settings:
        lines.append("  " + ", ".join(settings))
    for arm in order:
        a = arms[arm]
        parts = [f"{a.get('samples', 0):,} samples"]
        for k in ("positives", "negatives"):
            if _num(a.get(k)) is not None:
                parts.append(f"{a[k]:,.0f} {k}")
        groups = a.get("groups")
        if isinstance(groups, dict) and groups:
            parts.append(
                "groups " + ", ".join(f"{k} {v:,.0f}" for k, v in groups.items() if _num(v))
            )
        elif _num(groups) is not None:
            parts.append(f"{groups:,.0f} groups")
        if arm != baseline and a.get("pairing"):
            parts.append(str(a["pairing"]))
        elif arm != baseline and a.get("paired") is not None:
            parts.append("paired" if a["paired"] else "unpaired")
        if "step" not in body and step is None and a.get("step") is not None:
            parts.append(f"step {a['step']}")
        lines.append(f"  {arm}: " + ", ".join(parts))
    if body.get("note"):
        lines.append(f"  note: {body['note']}")
    metrics: list[str] = []
    for arm in order:
        for m in arms[arm].get("metrics") or {}:
            if m not in metrics:
                metrics.append(m)
    columns = [
        c
        for c in _COLUMNS
        if c[1] == "metrics"
        or any(_get(arms[a], c[1], m) is not None for a in order for m in metrics)
        or (c[1] == "delta" and len(order) > 1)
    ]
    headers = ["metric", "arm", *(c[0] for c in columns)]
    rows = []
    for m in metrics:
        for arm in order:
            rows.append([m, arm, *(fmt(_get(arms[arm], field, m)) for _, field, fmt in columns)])
    widths = [max(len(r[i]) for r in [headers, *rows]) for i in range(len(headers))]
    lines.append("")
    for row in [headers, ["-" * w for w in widths], *rows]:
        cells = [
            c.ljust(w) if i < 2 or headers[i] == "verdict" else c.rjust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def compare(args: argparse.Namespace) -> int:
    """Run ``rankboard compare``: 0 on success, 1 on an HTTP error, 2 when unreachable."""
    token = args.token or os.environ.get("RANKBOARD_READ_TOKEN") or None
    params: dict[str, Any] = {
        "alpha": args.alpha,
        "sequential": True if args.sequential else None,
        "horizon": args.horizon,
        "cluster": args.cluster,
        "step": args.step,
    }
    try:
        body = fetch_compare(
            args.url,
            args.experiment,
            task=args.task,
            baseline=args.baseline,
            phase=args.phase,
            params=params,
            token=token,
            timeout=args.timeout,
        )
    except CompareError as err:
        print(f"rankboard compare: {err}", file=sys.stderr)
        return err.exit_code
    if args.json:
        print(json.dumps(body, indent=2, allow_nan=False))
    else:
        print(format_compare(body))
    return 0
