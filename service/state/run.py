"""One run: the metric state of an (experiment, arm, task, phase).

An eval run keeps one window of metrics per eval step (a checkpoint evaluated
once is one window); a train run keeps decayed training metrics
(:class:`~rankboard.service.metrics.TrainMetricWrapper`) whose value at each
decay step becomes a history point.

Metrics are those declared by the run's first batch; without a declaration the
defaults of :func:`default_declaration` apply.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from rankboard.protos import metric_pb2
from rankboard.service.errors import DeclarationConflict, InvalidBatch
from rankboard.service.metrics.base import RankMetric
from rankboard.service.state.batch import Batch, RunKey
from rankboard.service.state.columns import SampleColumns
from rankboard.service.state.declaration import (
    Config,
    build_metrics,
    declaration_text,
    default_declaration,
    label_kind_of,
    metric_inputs,
    retained_nbytes,
)

PROBE_ROWS = 256  # rows of a first batch fed to fresh metrics to measure their memory


@dataclass(frozen=True)
class Computed:
    """A metric's results computed at once, standing in for a copy of the metric in a
    snapshot source: ``compute()``, ``extra_values()`` and ``num_groups`` as the metric
    gave them when it was computed."""

    value: torch.Tensor
    extras: dict[str, torch.Tensor]
    num_groups: int | None = None

    @classmethod
    def of(cls, metric: RankMetric) -> Computed:
        """Compute ``metric`` now (its state must not change meanwhile)."""
        value = metric.compute()
        extra = getattr(metric, "extra_values", None)
        groups = getattr(metric, "num_groups", None)
        return cls(
            value,
            dict(extra()) if callable(extra) else {},
            groups if groups is None or not callable(groups) else None,
        )

    def compute(self) -> torch.Tensor:
        """The value computed."""
        return self.value

    def extra_values(self) -> dict[str, torch.Tensor]:
        """The extra values computed."""
        return self.extras


def _split_checked(
    whole: dict[str, Any], segments: Sequence[tuple[int, int]]
) -> list[dict[str, Any]]:
    """A whole batch's validated inputs cut into its step segments (views, no copies)."""
    out, lo = [], 0
    for _, count in segments:
        out.append(
            {
                name: type(b)(*(None if x is None else x[lo : lo + count] for x in b))
                for name, b in whole.items()
            }
        )
        lo += count
    return out


@dataclass
class Window:
    """The metrics of one eval step (or the single window of a train run).

    Eval windows also keep their samples' columns (:class:`SampleColumns`) for the A/B
    statistics; train windows (decayed metrics) do not.
    """

    metrics: dict[str, RankMetric]
    samples: int = 0
    columns: SampleColumns | None = None


@dataclass
class Run:
    """Metric state of one (experiment, arm, task, phase)."""

    key: RunKey
    configs: list[Config]
    declared: bool
    label_kind: str
    device: torch.device
    windows: dict[int, Window] = field(default_factory=dict)
    samples: int = 0
    version: int = 0
    last_step: int = 0
    history_points: int = 0
    updated_at: float = field(default_factory=time.time)
    # bytes of retained per-sample state a sample of this run costs (None: not probed yet)
    bytes_per_sample: float | None = None
    _prototype: dict[str, RankMetric] = field(default_factory=dict, repr=False)
    # (batch, per-segment validated inputs) of the last check(), consumed by apply()
    _checked: tuple[Batch, list[dict[str, Any]]] | None = field(default=None, repr=False)

    @classmethod
    def create(cls, batch: Batch, device: torch.device) -> Run:
        """A new run for ``batch``'s key, declared by ``batch`` or with the defaults."""
        phase = batch.key.phase
        if phase == "eval" and batch.train_metrics:
            raise InvalidBatch("an eval batch declares train_metrics; use metrics")
        if phase == "train" and batch.metrics:
            raise InvalidBatch("a train batch declares metrics; use train_metrics")
        declared = batch.train_metrics if phase == "train" else batch.metrics
        configs: list[Config] = list(declared) if declared else default_declaration(batch)
        run = cls(batch.key, configs, bool(declared), label_kind_of(batch), device)
        run._prototype = build_metrics(phase, configs)
        return run

    @property
    def declaration(self) -> str:
        """The canonical text of the run's metric configs."""
        return declaration_text(self.configs)

    @property
    def metric_keys(self) -> list[str]:
        """Result keys of the run's metrics, in declaration order."""
        return list(self._prototype)

    @property
    def retained_bytes(self) -> float:
        """Bytes of per-sample state this run retains (0 for train runs)."""
        return self.samples * (self.bytes_per_sample or 0.0)

    def cost_per_sample(self, batch: Batch) -> float:
        """Bytes per sample the run's metrics retain: measured once, on fresh metrics fed
        the first rows of a checked ``batch`` (the run's state is not touched), then kept.

        Exact AUC keeps a float32 prediction and label per sample, grouped AUC those and
        an int64 key, binned and summed metrics nothing: a declaration's cost is read off
        the metric objects rather than kept in a table here.
        """
        if self.bytes_per_sample is not None:
            return self.bytes_per_sample
        if self.key.phase != "eval":
            self.bytes_per_sample = 0.0
            return 0.0
        part = batch.rows(0, min(batch.num_samples, PROBE_ROWS))
        metrics = build_metrics(self.key.phase, self.configs)
        cpu = torch.device("cpu")
        for name, metric in metrics.items():
            metric.update(part.predictions, part.labels, **metric_inputs(metric, name, part, cpu))
        columns = SampleColumns()
        columns.append(
            part.predictions, part.labels, part.weights, part.grouping_keys, part.sample_ids
        )
        nbytes = retained_nbytes(metrics.values()) + columns.nbytes
        self.bytes_per_sample = nbytes / part.num_samples
        return self.bytes_per_sample

    def check(self, batch: Batch) -> None:
        """Raise unless ``batch`` can be applied; changes nothing."""
        declared = batch.train_metrics if self.key.phase == "train" else batch.metrics
        other = batch.metrics if self.key.phase == "train" else batch.train_metrics
        if other:
            raise InvalidBatch(
                f"a {self.key.phase} batch declares "
                f"{'metrics' if self.key.phase == 'train' else 'train_metrics'}"
            )
        if declared and declaration_text(declared) != self.declaration:
            raise DeclarationConflict(
                f"run {self.key.experiment}/{self.key.arm}/{self.key.task}/{self.key.phase} "
                f"is declared with [{self.declaration.replace(chr(10), '; ')}]"
                f"{'' if self.declared else ' (the defaults)'}; a batch may not change it to "
                f"[{declaration_text(declared).replace(chr(10), '; ')}]"
            )
        # against the state each segment will update (e.g. a multi-class step's class
        # count), or a fresh window's metrics for a new step; a train batch's segments all
        # go to its one window and are checked at once
        parts = batch.split() if self.key.phase == "eval" else [batch]
        checked: list[dict[str, Any]] = []
        for part in parts:
            window = self.windows.get(part.step if self.key.phase == "eval" else 0)
            metrics = self._prototype if window is None else window.metrics
            validated: dict[str, Any] = {}
            for name, metric in metrics.items():
                kwargs = metric_inputs(metric, name, part, torch.device("cpu"))
                try:
                    validated[name] = metric.check_inputs(part.predictions, part.labels, **kwargs)
                except ValueError as err:
                    raise InvalidBatch(f"metric {name!r}: {err}") from None
            checked.append(validated)
        if self.key.phase == "train" and batch.step_segments:
            checked = _split_checked(checked[0], batch.step_segments)
        # validated once: apply() of this very batch adds these without checking again
        self._checked = (batch, checked)

    def apply(
        self, batch: Batch, undo: dict[str, Any] | None = None
    ) -> list[tuple[str, int, int, float]]:
        """Update the metrics with a checked batch, one update per step segment, all or
        nothing: if any update fails, the run is restored as it was and the error raised.
        ``undo``: the caller's :meth:`undo_point` for this batch, when it took one.

        Returns the train history points this batch produced, as
        ``(metric, point, step, value)``.
        """
        if undo is None:
            undo = self.undo_point(batch)
        pending, self._checked = self._checked, None
        checked = pending[1] if pending is not None and pending[0] is batch else None
        try:
            points: list[tuple[str, int, int, float]] = []
            for i, part in enumerate(batch.split()):
                points.extend(self._apply_segment(part, None if checked is None else checked[i]))
        except BaseException:
            self.rollback(undo)
            raise
        return points

    def undo_point(self, batch: Batch) -> dict[str, Any]:
        """What :meth:`rollback` needs to undo applying ``batch``, in O(states), not
        O(samples held): the lengths of the append-only list states and columns of the
        windows it touches, clones of their (small, fixed-size) tensor states, counters."""
        steps = {p.step if self.key.phase == "eval" else 0 for p in batch.split()}
        windows: dict[int, Any] = {}
        for step in steps:
            w = self.windows.get(step)
            windows[step] = (
                None
                if w is None
                else (
                    w.samples,
                    {k: m.undo_mark() for k, m in w.metrics.items()},
                    None if w.columns is None else w.columns.mark(),
                )
            )
        counters = (self.samples, self.version, self.last_step, self.history_points)
        return {"windows": windows, "counters": counters, "updated_at": self.updated_at}

    def rollback(self, undo: dict[str, Any]) -> None:
        """Restore the run as it was at :meth:`undo_point`."""
        for step, saved in undo["windows"].items():
            if saved is None:
                self.windows.pop(step, None)
                continue
            samples, marks, columns = saved
            window = self.windows[step]
            window.samples = samples
            if window.columns is not None and columns is not None:
                window.columns.truncate(columns)
            for k, m in window.metrics.items():
                m.undo(marks[k])
        self.samples, self.version, self.last_step, self.history_points = undo["counters"]
        self.updated_at = undo["updated_at"]

    def _apply_segment(
        self, batch: Batch, validated: dict[str, Any] | None = None
    ) -> list[tuple[str, int, int, float]]:
        step = batch.step if self.key.phase == "eval" else 0
        window = self.windows.get(step)
        if window is None:
            window = Window(build_metrics(self.key.phase, self.configs))
            for m in window.metrics.values():
                m.to(self.device)
            if self.key.phase == "eval":
                window.columns = SampleColumns()
            self.windows[step] = window
        points: list[tuple[str, int, int, float]] = []
        decayed = False
        if validated is None:
            preds = batch.predictions.to(self.device, non_blocking=True)
            labels = batch.labels.to(self.device, non_blocking=True)
        for name, metric in window.metrics.items():
            if validated is not None:
                metric.update_batch(validated[name])
            else:
                metric.update(preds, labels, **metric_inputs(metric, name, batch, self.device))
            if self.key.phase == "train" and getattr(metric, "refreshed", False):
                decayed = True
        if decayed:
            self.history_points += 1
            for name, metric in window.metrics.items():
                points.append((name, self.history_points, batch.step, float(metric.compute())))
        if window.columns is not None:
            window.columns.append(
                batch.predictions,
                batch.labels,
                batch.weights,
                batch.grouping_keys,
                batch.sample_ids,
            )
        window.samples += batch.num_samples
        self.samples += batch.num_samples
        self.last_step = max(self.last_step, batch.step)
        self.version += 1
        self.updated_at = time.time()
        return points

    def latest_step(self) -> int:
        """The newest eval step (the train run's last step for train runs)."""
        if self.key.phase == "eval" and self.windows:
            return max(self.windows)
        return self.last_step

    def sources(self, step: int) -> tuple[dict[str, RankMetric], int]:
        """Copies of the metrics of ``step`` that can be computed without the lock.

        Per-sample list states are shared (they are only ever appended to);
        tensor states are cloned. Returns ``(metrics, samples)``.
        """
        window = self.windows.get(0 if self.key.phase == "train" else step)
        if window is None:
            return {}, 0
        out: dict[str, Any] = {}
        for name, metric in window.metrics.items():
            if self.key.phase == "train":
                # decayed metrics keep small fixed states: computing them here, under the
                # caller's lock, is ~20x cheaper than copying the wrapper's modules
                out[name] = Computed.of(metric)
            else:
                out[name] = metric.state_copy()
        return out, window.samples

    def key_columns(self, step: int) -> list[str]:
        """Names of the grouping-key columns every sample of eval step ``step`` has."""
        window = self.windows.get(step) if self.key.phase == "eval" else None
        if window is None or window.columns is None:
            return []
        return window.columns.complete_keys()

    def columns(self, step: int) -> SampleColumns | None:
        """A copy (sharing chunks) of eval step ``step``'s sample columns, or None."""
        window = self.windows.get(step) if self.key.phase == "eval" else None
        if window is None or window.columns is None:
            return None
        return window.columns.copy()

    # --- persistence -------------------------------------------------------------
    def to_state(self) -> dict[str, Any]:
        """Everything needed to rebuild the run, cheap enough to take under the store's lock.

        Retained samples are shared with the live metrics, not copied (see
        :meth:`RankMetric.state_snapshot`); fixed-size tensor states are copies. Tensors
        stay on the run's device (the checkpoint writer moves what it writes).
        """
        return {
            "key": self.key,
            "configs": [c.SerializeToString() for c in self.configs],
            "declared": self.declared,
            "label_kind": self.label_kind,
            "samples": self.samples,
            "version": self.version,
            "last_step": self.last_step,
            "history_points": self.history_points,
            "updated_at": self.updated_at,
            "bytes_per_sample": self.bytes_per_sample,
            "windows": {
                step: {
                    "samples": w.samples,
                    "metrics": {k: m.state_snapshot() for k, m in w.metrics.items()},
                    "columns": None if w.columns is None else w.columns.state(),
                }
                for step, w in self.windows.items()
            },
        }

    @classmethod
    def from_state(cls, state: dict[str, Any], device: torch.device) -> Run:
        """Rebuild a run saved by :meth:`to_state`."""
        key: RunKey = state["key"]
        msg_cls = metric_pb2.TrainMetricConfig if key.phase == "train" else metric_pb2.MetricConfig
        configs = [msg_cls.FromString(b) for b in state["configs"]]
        run = cls(key, configs, state["declared"], state["label_kind"], device)
        run._prototype = build_metrics(key.phase, configs)
        run.samples = state["samples"]
        run.version = state["version"]
        run.last_step = state["last_step"]
        run.history_points = state["history_points"]
        run.updated_at = state.get("updated_at", time.time())
        run.bytes_per_sample = state.get("bytes_per_sample")
        for step, w in state["windows"].items():
            metrics = build_metrics(key.phase, configs)
            for k, m in metrics.items():
                m.load_state_dict(w["metrics"][k])
                m.to(device)
            cols = w.get("columns")
            run.windows[step] = Window(
                metrics, w["samples"], None if cols is None else SampleColumns.from_state(cols)
            )
        if run.bytes_per_sample is None and key.phase == "eval" and run.samples:
            # a checkpoint written before the probe existed: measure the state itself
            nbytes = retained_nbytes(m for w in run.windows.values() for m in w.metrics.values())
            run.bytes_per_sample = nbytes / run.samples
        return run
