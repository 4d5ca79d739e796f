"""Applying batches to the store's runs: the state ingestion and log replay share.

A :class:`Ledger` holds the runs, each producer's last applied sequence, and the
accounts the caps are checked against (``caps.py``). :meth:`Ledger.admit` and
:meth:`Ledger.apply` are the one path a batch takes into the state, whether it
comes live from a producer (``MetricStore.ingest``, which adds the caps check and
the log append between them) or from the write-ahead log on start
(:func:`rankboard.service.state.recovery.recover`). The ledger takes no lock: its
owner (the store) holds its ingestion lock around every call that changes it.

Example::

    >>> import numpy as np, torch
    >>> from rankboard.protos import ingest_pb2
    >>> from rankboard.service.state.batch import decode_batch, encode_array
    >>> ledger = Ledger(torch.device("cpu"), registry=None)
    >>> batch = decode_batch(ingest_pb2.Batch(producer_id="p", sequence=1, experiment="e",
    ...     arm="a", task="ctr", phase=ingest_pb2.PHASE_EVAL, step=1,
    ...     predictions=encode_array(np.array([0.1, 0.8], np.float32)),
    ...     labels=encode_array(np.array([0, 1], np.float32))))
    >>> run, new = ledger.admit(batch)
    >>> ledger.apply(run, batch, new)
    >>> ledger.admit(batch) is None, ledger.retained, ledger.producers
    (True, 2, {'p': 1})
"""

from __future__ import annotations

import time
from typing import Any

import torch

from rankboard.service.errors import CapacityExceeded
from rankboard.service.state import caps
from rankboard.service.state.batch import Batch, RunKey
from rankboard.service.state.registry import Registry
from rankboard.service.state.run import Run


def key_tuple(key: RunKey) -> tuple[str, str, str, str]:
    """``key`` as the plain tuple the registry and checkpoints store.

    >>> key_tuple(RunKey("e", "a", "ctr", "eval"))
    ('e', 'a', 'ctr', 'eval')
    """
    return (key.experiment, key.arm, key.task, key.phase)


class Ledger:
    """The runs, the producers' sequences and the cap accounts (see the module)."""

    def __init__(self, device: torch.device, registry: Registry | None) -> None:
        self.device = device
        self.registry = registry  # None: no history rows (doctests)
        self.runs: dict[RunKey, Run] = {}
        self.producers: dict[str, int] = {}  # producer -> last applied sequence
        self.retained = 0  # eval samples held
        self.retained_bytes = 0.0
        # fixed state charged to the same cap: runs, windows, producer entries (caps.py)
        self.fixed_bytes = 0.0
        self._producer_runs: dict[str, set[RunKey]] = {}  # producers expire with their runs
        self._last_charge: tuple[Batch | None, float, float] = (None, 0.0, 0.0)
        self._segment_bytes: dict[RunKey, float] = {}  # per-update overhead charged a run
        # TTL also on the monotonic clock: a wall clock set forward expires nothing
        self.touched: dict[str, float] = {}  # experiment -> monotonic time of its last batch

    # --- one batch -------------------------------------------------------------------
    def admit(self, batch: Batch) -> tuple[Run, bool] | None:
        """The run ``batch`` goes to and whether it is new; None for a duplicate.

        Raises (changing nothing) when the batch does not fit its run's state.
        """
        last = self.producers.get(batch.producer_id)
        if last is not None and batch.sequence <= last:
            return None
        run = self.runs.get(batch.key)
        new = run is None
        if run is None:
            run = Run.create(batch, self.device)
        run.check(batch)  # against the state it will update: refusals change nothing
        return run, new

    def check_caps(
        self,
        run: Run,
        batch: Batch,
        max_runs: int,
        max_retained_bytes: float,
        max_samples_per_run: int,
        max_samples_total: int,
    ) -> None:
        """Raise :class:`CapacityExceeded` where applying ``batch`` would pass a cap."""
        new = run.key not in self.runs
        if new and len(self.runs) >= max_runs:
            raise CapacityExceeded(
                f"the service holds {len(self.runs)} runs, its cap"
                " (rankboard serve --max-runs); delete old experiments to free room"
            )
        n = batch.num_samples if run.key.phase == "eval" else 0
        more = n * run.cost_per_sample(batch) + sum(self._charge(run, batch, new))
        held = self.retained_bytes + self.fixed_bytes
        if held + more > max_retained_bytes:
            raise CapacityExceeded(
                f"the service would hold {(held + more) / 2**20:.1f} MiB of metric state"
                f" ({run.bytes_per_sample or 0:g} bytes a sample in this run,"
                f" {caps.window_cost(run)} bytes a step window), over its cap of"
                f" {max_retained_bytes / 2**20:.1f} MiB"
                " (rankboard serve --max-retained-mb); delete old experiments to free room"
            )
        if run.key.phase != "eval":
            return
        if run.samples + n > max_samples_per_run:
            raise CapacityExceeded(
                f"run {'/'.join(run.key.__dict__.values())} would hold {run.samples + n} samples,"
                f" over the cap of {max_samples_per_run} per run"
                " (rankboard serve --max-samples-per-run); delete old experiments to free room"
            )
        if self.retained + n > max_samples_total:
            raise CapacityExceeded(
                f"the service would retain {self.retained + n} eval samples, over its cap of"
                f" {max_samples_total} (rankboard serve --max-samples-total)"
            )

    def _charge(self, run: Run, batch: Batch, new: bool) -> tuple[float, float]:
        """Fixed bytes applying ``batch`` adds: a new run, new windows, a new producer,
        and (second) its segments' per-update overhead."""
        steps = [p.step for p in batch.split()]
        charge = caps.window_cost(run) if new else 0
        charge += caps.window_cost(run) * caps.new_windows(run, steps)
        if batch.producer_id not in self.producers:
            charge += caps.producer_cost(batch.producer_id)
        return float(charge), float(len(steps) * caps.segment_cost(run, batch))

    def apply(self, run: Run, batch: Batch, new: bool, undo: dict | None = None) -> None:
        """Apply an admitted ``batch`` to ``run`` and the accounts, all or nothing."""
        charge, segments = self._charge(run, batch, new)
        points = run.apply(batch, undo)  # all or nothing: a failure leaves no trace here
        if new:
            self.runs[run.key] = run
            if self.registry is not None:
                self.registry.register_run(key_tuple(run.key), run.declaration, run.label_kind)
        if run.key.phase == "eval":
            self.retained += batch.num_samples
            self.retained_bytes += batch.num_samples * run.cost_per_sample(batch)
        self.fixed_bytes += charge + segments
        self._segment_bytes[run.key] = self._segment_bytes.get(run.key, 0.0) + segments
        self._last_charge = (batch, charge, segments)
        if points and self.registry is not None:
            self.registry.record_many(key_tuple(run.key), points)
        self.producers[batch.producer_id] = batch.sequence
        self._producer_runs.setdefault(batch.producer_id, set()).add(run.key)
        self.touched[run.key.experiment] = time.monotonic()

    def unapply(self, run: Run, batch: Batch, new: bool, undo: dict, last: int | None) -> None:
        """Undo :meth:`apply` of a batch that could not be logged (``last``: the
        producer's sequence before it)."""
        run.rollback(undo)
        if run.key.phase == "eval":
            self.retained -= batch.num_samples
            self.retained_bytes -= batch.num_samples * run.cost_per_sample(batch)
        if new:
            self.runs.pop(run.key, None)
        if self._last_charge[0] is batch:  # the fixed-state account too
            self.fixed_bytes -= self._last_charge[1] + self._last_charge[2]
            self._segment_bytes[run.key] = (
                self._segment_bytes.get(run.key, 0.0) - self._last_charge[2]
            )
            runs = self._producer_runs.get(batch.producer_id, set())
            if new:
                runs.discard(run.key)
            if last is None:
                self._producer_runs.pop(batch.producer_id, None)
        if last is None:
            self.producers.pop(batch.producer_id, None)
        else:
            self.producers[batch.producer_id] = last

    def delete(self, experiment: str) -> None:
        """Drop an experiment's runs and the producers that wrote to no other run.

        A producer's exactly-once entry lives as long as a run it wrote to: once the
        last one is deleted (or expired) the producer is forgotten, and a batch it
        re-sends later counts as new. Exactly-once thus holds for live producers only.
        """
        gone = set()
        for key in [k for k in self.runs if k.experiment == experiment]:
            run = self.runs.pop(key)
            gone.add(key)
            self.fixed_bytes -= caps.run_state_bytes(run) + self._segment_bytes.pop(key, 0.0)
            if key.phase == "eval":
                self.retained -= run.samples
                self.retained_bytes -= run.retained_bytes
        for producer in list(self._producer_runs):
            runs = self._producer_runs[producer]
            runs -= gone
            if not runs:
                del self._producer_runs[producer]
                if self.producers.pop(producer, None) is not None:
                    self.fixed_bytes -= caps.producer_cost(producer)
        self.touched.pop(experiment, None)
        if self.registry is not None:
            self.registry.delete_experiment(experiment)

    # --- checkpoints ---------------------------------------------------------------
    def to_state(self) -> dict[str, Any]:
        """What a checkpoint keeps (retained chunks by reference, not copied)."""
        return {
            "format": 2,
            "producers": dict(self.producers),
            "segment_bytes": [(key_tuple(k), v) for k, v in self._segment_bytes.items()],
            "producer_runs": {
                p: sorted(key_tuple(k) for k in ks) for p, ks in self._producer_runs.items()
            },
            "runs": [run.to_state() for run in self.runs.values()],
        }

    def load_state(self, state: dict[str, Any]) -> None:
        """Take the state of a checkpoint (:meth:`to_state`) into an empty ledger."""
        self.producers = dict(state["producers"])
        # older checkpoints do not say which runs a producer wrote to (no
        # "producer_runs"): those producers are kept (never expire)
        self._producer_runs = {
            p: {RunKey(*k) for k in keys} for p, keys in state.get("producer_runs", {}).items()
        }
        self.fixed_bytes = float(sum(caps.producer_cost(p) for p in self.producers))
        self._segment_bytes = {RunKey(*k): float(v) for k, v in state.get("segment_bytes", [])}
        self.fixed_bytes += sum(self._segment_bytes.values())
        for run_state in state["runs"]:
            run = Run.from_state(run_state, self.device)
            self.runs[run.key] = run
            self.fixed_bytes += caps.run_state_bytes(run)
            if run.key.phase == "eval":
                self.retained += run.samples
                self.retained_bytes += run.retained_bytes
