"""What each piece of state costs, for the store's caps (``--max-retained-mb``, ``--max-runs``).

Every byte of state is charged to the ``--max-retained-mb`` account, not only the
per-sample chunks:

* **per sample** (eval runs): the bytes a sample's retained chunks take, measured
  by the run on its first rows (:meth:`Run.cost_per_sample`);
* **per window**: each eval step (and a train run's single window) holds a full set
  of metric objects, fixed-size tensors (bins, decayed sums) and the sample columns.
  Its cost is measured once per declaration by building a fresh window and walking
  its object graph (:func:`object_nbytes`: Python objects and tensor storage), not
  kept in a table here;
* **per segment** (eval): each update appends a chunk to every per-sample list, and a
  chunk's tensor objects cost about 600-900 bytes whatever its length (a stream of
  one-sample batches would otherwise hold ~40x what it is charged); measured once per
  run by updating a fresh window twice with one row (:func:`segment_cost`);
* **per run**: the run's own metric prototype (one more window's worth);
* **per producer**: its entry in the exactly-once table.

Measured on this machine for the default eval declaration (AUC + NE): the object
walk finds about 12.6 KiB a window, while the resident memory grows by about
20 KiB a window (allocator and C++ tensor overhead the walk cannot see): the charge is
the measured lower part of the real cost, within a factor of 1.6.

Example::

    >>> object_nbytes([1.5, "abc"]) > 0
    True
"""

from __future__ import annotations

import gc
import sys
import types
from typing import Any

import torch

from rankboard.service.state.batch import Batch
from rankboard.service.state.columns import SampleColumns
from rankboard.service.state.declaration import build_metrics, metric_inputs
from rankboard.service.state.run import Run, Window

_SKIP = (
    type,
    types.ModuleType,
    types.FunctionType,
    types.BuiltinFunctionType,
    types.MethodType,
    types.CodeType,
    torch.device,
    torch.dtype,
)
_window_costs: dict[tuple[str, str, str], int] = {}


def object_nbytes(root: Any) -> int:
    """Bytes of the objects reachable from ``root`` (tensor elements included).

    Classes, modules and functions are shared and not counted.
    """
    seen: set[int] = set()
    stack = [root]
    total = 0
    while stack:
        obj = stack.pop()
        if id(obj) in seen or isinstance(obj, _SKIP):
            continue
        seen.add(id(obj))
        total += sys.getsizeof(obj)
        if isinstance(obj, torch.Tensor):  # its elements (a view does not own its storage)
            total += obj.numel() * obj.element_size()
            continue
        stack.extend(gc.get_referents(obj))
    return total


def window_cost(run: Run) -> int:
    """Bytes a new window of ``run`` costs (measured once per phase and declaration,
    then kept on the run: the declaration's text is too slow to build per batch)."""
    cost = run.__dict__.get("_window_cost")
    if cost is not None:
        return cost
    key = (run.key.phase, run.declaration, str(run.device))
    cost = _window_costs.get(key)
    if cost is None:
        metrics = build_metrics(run.key.phase, run.configs, run.device)
        columns = SampleColumns() if run.key.phase == "eval" else None
        cost = _window_costs[key] = object_nbytes(Window(metrics, columns=columns))
    run.__dict__["_window_cost"] = cost
    return cost


def segment_cost(run: Run, batch: Batch) -> int:
    """Bytes a segment (one update) adds to an eval window beyond its samples' bytes.

    Measured once per run on a fresh window fed the first row of ``batch`` twice: the
    second update's growth, less the row's per-sample bytes.
    """
    cost = run.__dict__.get("_segment_cost")
    if cost is not None:
        return cost
    if run.key.phase != "eval":
        cost = 0
    else:
        part = batch.rows(0, 1)
        cpu = torch.device("cpu")
        columns = SampleColumns()
        window = Window(build_metrics(run.key.phase, run.configs), columns=columns)

        def update() -> None:
            for name, metric in window.metrics.items():
                inputs = metric_inputs(metric, name, part, cpu)
                metric.update(part.predictions, part.labels, **inputs)
            columns.append(
                part.predictions, part.labels, part.weights, part.grouping_keys, part.sample_ids
            )

        update()
        before = object_nbytes(window)
        update()
        grown = object_nbytes(window) - before
        cost = max(0, int(grown - run.cost_per_sample(batch)))
    run.__dict__["_segment_cost"] = cost
    return cost


def producer_cost(producer_id: str) -> int:
    """Bytes of a producer's entry in the exactly-once table (id, sequence, run set).

    >>> producer_cost("rank-0") > len("rank-0")
    True
    """
    return sys.getsizeof(producer_id) + sys.getsizeof(2**62) + sys.getsizeof(set()) + 64


def new_windows(run: Run, steps: list[int]) -> int:
    """How many of a batch's segment ``steps`` open a window ``run`` does not have yet."""
    if run.key.phase != "eval":
        return 0 if 0 in run.windows else 1
    return len({s for s in steps if s not in run.windows})


def run_state_bytes(run: Run) -> int:
    """The fixed bytes charged for ``run`` (prototype + windows), per-sample bytes apart."""
    return window_cost(run) * (1 + len(run.windows))
