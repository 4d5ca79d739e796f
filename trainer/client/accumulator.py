"""The accumulator: records queued by ``log()``, batched and lingered, under a memory bound.

:meth:`Accumulator.add` is the producer's half (the training thread):
it holds a record to the memory bound, applying the ``when_full`` policy
(spill the oldest unacknowledged batches to disk, block, or drop the record),
and queues it. The sender thread (:class:`rankboard.protos.stream.Sender`)
is the other half: it asks :meth:`~Accumulator.linger_left` whether the queue
should go, :meth:`~Accumulator.take` s the records that can share a batch and
:meth:`~Accumulator.encode` s them with the wire codec, a :class:`StepSegment`
per step so that each training step stays one update of the service's decayed
metrics however records are batched.

Records are host copies made at :meth:`~Accumulator.make_record` time (on a
side CUDA stream for GPU tensors), so the caller may reuse its tensors at once.

Example::

    >>> from rankboard.protos.stream import Sender
    >>> acc = Accumulator(Sender("127.0.0.1:1", "p"), None, experiment="e", arm="a")
    >>> r = acc.make_record([0.2, 0.7], [0, 1], "ctr", "eval", 3, {"user": [1, 1]}, None)
    >>> with acc.lock:
    ...     acc.add(r)
    ...     batch, samples = acc.encode(acc.take())[0]
    True
    >>> batch.task, batch.step, samples, batch.grouping_keys[0].name
    ('ctr', 3, 2, 'user')
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch

from rankboard.protos import ingest_pb2, wire
from rankboard.protos.stream import MetricsStreamError, Sender

if TYPE_CHECKING:
    from rankboard.trainer.client.spill import SpillStore

logger = logging.getLogger(__name__)

WhenFull = Literal["spill", "block", "drop"]


@dataclass
class Record:
    """One ``log()`` call's samples, as host tensors."""

    task: str
    phase: str
    step: int
    predictions: torch.Tensor
    labels: torch.Tensor
    weights: torch.Tensor | None
    keys: dict[str, torch.Tensor]
    num_classes: int
    n: int
    event: Any = None  # a torch.cuda.Event when copied on a side stream
    queued_at: float = field(default_factory=time.monotonic)
    sample_ids: torch.Tensor | None = None

    @property
    def shape_key(self) -> tuple[Any, ...]:
        """Records with equal keys can share a batch (the step may differ)."""
        return (
            self.task,
            self.phase,
            self.num_classes,
            self.weights is not None,
            tuple(self.keys),
            self.sample_ids is not None,
        )


@dataclass
class Limits:
    """The accumulator's bounds and policy, checked when made (``ValueError``).

    ``max_pending_samples``: queued plus unacknowledged samples held in memory;
    ``max_batch_samples``: the largest batch; ``linger``: seconds a queued record may wait
    for others to share its batch; ``when_full``: ``"spill"``, ``"block"`` or ``"drop"``.

    >>> Limits(linger=-1.0)
    Traceback (most recent call last):
    ...
    ValueError: linger must be >= 0 seconds, got -1.0
    """

    max_pending_samples: int = 2_000_000
    max_batch_samples: int = 65_536
    linger: float = 0.1
    when_full: WhenFull = "spill"

    def __post_init__(self) -> None:
        if self.when_full not in ("spill", "block", "drop"):
            raise ValueError(
                f"when_full must be 'spill', 'block' or 'drop', got {self.when_full!r}"
            )
        if self.max_pending_samples < 1 or self.max_batch_samples < 1:
            raise ValueError("max_pending_samples and max_batch_samples must be positive")
        if not self.linger >= 0:  # NaN too
            raise ValueError(f"linger must be >= 0 seconds, got {self.linger}")
        self.max_pending_samples = int(self.max_pending_samples)
        self.max_batch_samples = int(self.max_batch_samples)
        self.linger = float(self.linger)


class Accumulator:
    """Queued records of one producer, the memory bound and the ``when_full`` policy.

    ``pending`` samples (queued plus unacknowledged, spilled ones included) are
    bounded by ``limits.max_pending_samples`` in memory; the lock is the sender's.
    """

    def __init__(
        self,
        sender: Sender,
        spill: SpillStore | None,
        *,
        experiment: str,
        arm: str,
        limits: Limits | None = None,
    ) -> None:
        self.sender = sender
        self.spill = spill
        self.lock = sender.lock
        self.experiment = experiment
        self.arm = arm
        self.limits = limits or Limits()
        self.declared: dict[tuple[str, str], list[Any]] = {}
        self.queue: deque[Record] = deque()
        self.queued_samples = 0
        self.flushing = 0  # flushes waiting: no lingering
        self.closing = False  # no new records
        self.counts: dict[str, int] = dict.fromkeys(
            ["logged_records", "logged_samples", "dropped_records", "dropped_samples"], 0
        )
        self._copy_streams: dict[Any, Any] = {}

    # ------------------------------------------------------------ lock held
    def pending(self) -> int:
        """Queued plus unacknowledged samples, spilled ones included."""
        return self.queued_samples + self.sender.unacked_samples

    def in_memory(self) -> int:
        """Pending samples held in memory."""
        return self.pending() - (self.spill.samples if self.spill is not None else 0)

    def check_usable(self) -> None:
        """Raise the stream's fatal error, or :class:`MetricsStreamError` once closing."""
        self.sender.raise_fatal()
        if self.closing:
            raise MetricsStreamError(f"rankboard stream {self.sender.producer_id} is closed")

    def add(self, record: Record) -> bool:
        """Queue ``record`` within the memory bound; False when dropped (``"drop"``)."""
        self.check_usable()
        waited_since: float | None = None
        sender, limit = self.sender, self.limits.max_pending_samples
        while self.in_memory() > 0 and self.in_memory() + record.n > limit:
            if self.limits.when_full == "spill" and self.spill is not None:
                fits = lambda: self.in_memory() + record.n <= limit  # noqa: E731
                if self.spill.spill_oldest(sender.unacked.values(), fits):
                    continue
            if self.limits.when_full == "drop":
                self.counts["dropped_records"] += 1
                self.counts["dropped_samples"] += record.n
                dropped = self.counts["dropped_records"]
                if dropped == 1 or dropped % 1000 == 0:
                    logger.warning(
                        "rankboard stream %s: service slower than training, dropped %d "
                        "records (%d samples) so far",
                        sender.producer_id,
                        dropped,
                        self.counts["dropped_samples"],
                    )
                return False
            if waited_since is None:
                waited_since = time.monotonic()
            sender.work.notify()  # queued records become (spillable) batches
            sender.acked.wait(0.05 if self.limits.when_full == "spill" else 1.0)
            self.check_usable()
            if waited_since and time.monotonic() - waited_since > 10.0:
                logger.warning(
                    "rankboard stream %s: log() blocked for 10 s waiting for acks "
                    "(%d samples pending; last error: %s)",
                    sender.producer_id,
                    self.pending(),
                    sender.last_error,
                )
                waited_since = 0.0
        was_idle = not self.queue
        self.queued_samples += record.n
        self.queue.append(record)
        self.counts["logged_records"] += 1
        self.counts["logged_samples"] += record.n
        # a sender with records queued already is busy or lingering on a timer:
        # wake it only to start one, or to end it early (each wake costs the
        # training thread a GIL handoff)
        if was_idle or (self.linger_left() or 0.0) <= 0:
            sender.work.notify()
        return True

    def linger_left(self) -> float | None:
        """Seconds the queued records may still wait for company; None when none is queued."""
        if not self.queue:
            return None
        if (
            self.limits.linger <= 0
            or self.flushing
            or self.closing
            or self.queued_samples >= self.limits.max_batch_samples
            or 2 * self.in_memory() >= self.limits.max_pending_samples
        ):
            return 0.0
        return self.queue[0].queued_at + self.limits.linger - time.monotonic()

    def take(self) -> list[Record]:
        """Records to send now: the first one and the ones that can share its batch."""
        first = self.queue.popleft()
        records = [first]
        total = first.n
        while (
            self.queue
            and self.queue[0].shape_key == first.shape_key
            and total + self.queue[0].n <= self.limits.max_batch_samples
        ):
            rec = self.queue.popleft()
            records.append(rec)
            total += rec.n
        # still pending: the sender counts them as unacknowledged from here on
        self.queued_samples -= total
        self.sender.unacked_samples += total
        return records

    # ------------------------------------------------------------ no lock
    def encode(self, records: list[Record]) -> list[tuple[ingest_pb2.Batch, int]]:
        """``(batch, samples)`` of ``records``: at most ``max_batch_samples`` each, unnumbered."""
        for r in records:
            if r.event is not None:
                r.event.synchronize()
        first = records[0]

        def cat(parts: list[torch.Tensor]) -> np.ndarray:
            return (parts[0] if len(parts) == 1 else torch.cat(parts)).numpy()

        preds = cat([r.predictions for r in records])
        labels = cat([r.labels for r in records])
        # records share a batch only when they have the same columns (Record.shape_key)
        weights = (
            cat([r.weights for r in records if r.weights is not None])
            if first.weights is not None
            else None
        )
        keys = {name: cat([r.keys[name] for r in records]) for name in first.keys}
        ids = (
            cat([r.sample_ids for r in records if r.sample_ids is not None])
            if first.sample_ids is not None
            else None
        )
        n = labels.shape[0]
        width = max(first.num_classes, 1)
        declared = self.declared.get((first.task, first.phase), [])
        # (step, first row, end row) of each run of records of one step
        spans: list[list[int]] = []
        row = 0
        for r in records:
            if spans and spans[-1][0] == r.step:
                spans[-1][2] += r.n
            else:
                spans.append([r.step, row, row + r.n])
            row += r.n
        out = []
        for lo in range(0, n, self.limits.max_batch_samples):
            hi = min(n, lo + self.limits.max_batch_samples)
            parts = [
                (step, min(end, hi) - max(start, lo))
                for step, start, end in spans
                if start < hi and end > lo
            ]
            batch = wire.encode_batch(
                producer_id=self.sender.producer_id,
                experiment=self.experiment,
                arm=self.arm,
                task=first.task,
                phase=first.phase,
                step=parts[0][0],
                predictions=preds[lo * width : hi * width],
                labels=labels[lo:hi],
                num_classes=first.num_classes,
                weights=None if weights is None else weights[lo:hi],
                grouping_keys={name: col[lo:hi] for name, col in keys.items()},
                sample_ids=None if ids is None else ids[lo:hi],
                segments=parts if len(parts) > 1 else (),
                metrics=declared,
            )
            out.append((batch, hi - lo))
        return out

    def make_record(
        self,
        predictions: Any,
        labels: Any,
        task: str,
        phase: str,
        step: int,
        grouping_keys: Mapping[str, Any] | None,
        weights: Any,
        sample_ids: Any = None,
    ) -> Record:
        """Check one ``log()`` call's columns and copy them to the host."""
        preds = torch.as_tensor(predictions)
        labs = torch.as_tensor(labels)
        n = labs.numel()
        if labs.dim() > 1 and labs.numel() != labs.shape[0]:
            raise ValueError(
                f"labels must have one value per sample, got shape {tuple(labs.shape)}"
            )
        num_classes = 0
        if preds.dim() == 2 and preds.shape[1] > 1:
            num_classes = int(preds.shape[1])
        if preds.numel() != n * max(num_classes, 1):
            raise ValueError(
                f"{task}/{phase}: {n} labels but predictions of shape {tuple(preds.shape)}"
            )
        tensors: list[tuple[torch.Tensor, torch.dtype]] = [
            (preds, torch.float32),
            (labs, torch.float32),
        ]
        key_names: list[str] = []
        for name, col in (grouping_keys or {}).items():
            col_t = torch.as_tensor(col)
            if col_t.numel() != n:
                raise ValueError(f"{task}/{phase}: {n} labels but {col_t.numel()} keys in {name!r}")
            if col_t.is_floating_point():
                raise ValueError(f"grouping key {name!r} must be integers, got {col_t.dtype}")
            key_names.append(name)
            tensors.append((col_t, torch.int64))
        if weights is not None:
            w = torch.as_tensor(weights)
            if w.numel() != n:
                raise ValueError(f"{task}/{phase}: {n} labels but {w.numel()} weights")
            tensors.append((w, torch.float32))
        if sample_ids is not None:
            ids = torch.as_tensor(sample_ids)
            if ids.numel() != n:
                raise ValueError(f"{task}/{phase}: {n} labels but {ids.numel()} sample_ids")
            if ids.is_floating_point():
                raise ValueError(f"sample_ids must be integers, got {ids.dtype}")
            tensors.append((ids, torch.int64))
        host, event = self._to_host(tensors)
        ids_host = host.pop() if sample_ids is not None else None
        keys = dict(zip(key_names, host[2 : 2 + len(key_names)], strict=True))
        return Record(
            task=task,
            phase=phase,
            step=step,
            predictions=host[0],
            labels=host[1],
            weights=host[-1] if weights is not None else None,
            keys=keys,
            num_classes=num_classes,
            n=n,
            event=event,
            sample_ids=ids_host,
        )

    def _to_host(
        self, tensors: list[tuple[torch.Tensor, torch.dtype]]
    ) -> tuple[list[torch.Tensor], Any]:
        """Detached, flattened host copies; CUDA tensors go on a side stream."""
        out: list[torch.Tensor] = []
        event = None
        for t, dtype in tensors:
            t = t.detach().reshape(-1)
            if t.device.type == "cuda":
                side = self._copy_streams.get(t.device)
                if side is None:
                    side = self._copy_streams[t.device] = torch.cuda.Stream(device=t.device)
                side.wait_stream(torch.cuda.current_stream(t.device))
                with torch.cuda.stream(side):
                    src = t.to(dtype)
                    dst = torch.empty(src.shape, dtype=dtype, pin_memory=True)
                    dst.copy_(src, non_blocking=True)
                t.record_stream(side)
                src.record_stream(side)
                event = torch.cuda.Event()
                event.record(side)
                out.append(dst)
            else:
                out.append(t.to(device="cpu", dtype=dtype, copy=True))
        return out, event
