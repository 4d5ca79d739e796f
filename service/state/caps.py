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

from rankboard.service.state.columns import SampleColumns
from rankboard.service.state.run import Run, Window, _build

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
    """Bytes of the objects reachable from ``root`` (tensor storage included).

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
        if isinstance(obj, torch.Tensor):
            total += obj.untyped_storage().nbytes()
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
        window = Window(_build(run.key.phase, run.configs))
        for metric in window.metrics.values():
            metric.to(run.device)
        if run.key.phase == "eval":
            window.columns = SampleColumns()
        cost = _window_costs[key] = object_nbytes(window)
    run.__dict__["_window_cost"] = cost
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
