"""Operational counters of the service, cheap enough to bump on every batch.

Plain thread-safe objects with no dependency: the store, the write-ahead log and the
gRPC servicer bump them with one line each, and the Prometheus collector
(:mod:`rankboard.service.rest.prometheus`) reads them at scrape time. They count per
process (a service is one process); tests compare before and after.

Example::

    >>> h = Histogram((0.01, 0.1))
    >>> h.observe(0.05); h.observe(2.0)
    >>> h.snapshot()
    ([0, 1, 2], 2.05)
    >>> c = Counter(); c.inc(3); c.value
    3.0
"""

from __future__ import annotations

import bisect
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator

# seconds; from a fast local fsync (~0.1 ms) to a stalled disk
LATENCY_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)


class Counter:
    """A monotonically increasing number."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.value = 0.0

    def inc(self, amount: float = 1.0) -> None:
        """Add ``amount`` (>= 0)."""
        with self._lock:
            self.value += amount


class Gauge:
    """A number that goes up and down."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.value = 0.0

    def add(self, amount: float) -> None:
        """Add ``amount`` (may be negative)."""
        with self._lock:
            self.value += amount


class Histogram:
    """Cumulative-bucket histogram of observations (Prometheus semantics).

    ``snapshot()`` gives cumulative counts per upper bound, the last one for +Inf,
    and the sum of observations.
    """

    def __init__(self, buckets: tuple[float, ...] = LATENCY_BUCKETS) -> None:
        self.buckets = tuple(sorted(buckets))
        self._counts = [0] * (len(self.buckets) + 1)
        self._sum = 0.0
        self._lock = threading.Lock()

    def observe(self, value: float) -> None:
        """Record one observation."""
        i = bisect.bisect_left(self.buckets, value)
        with self._lock:
            self._counts[i] += 1
            self._sum += value

    def snapshot(self) -> tuple[list[int], float]:
        """(cumulative counts per bucket and +Inf, sum)."""
        with self._lock:
            counts, total = list(self._counts), self._sum
        out, running = [], 0
        for c in counts:
            running += c
            out.append(running)
        return out, total


class LabeledCounter:
    """Counters by a tuple of label values, created on first use."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values: dict[tuple[str, ...], float] = {}

    def inc(self, labels: tuple[str, ...], amount: float = 1.0) -> None:
        """Add ``amount`` to the counter of ``labels``."""
        with self._lock:
            self._values[labels] = self._values.get(labels, 0.0) + amount

    def items(self) -> list[tuple[tuple[str, ...], float]]:
        """(labels, value) pairs, sorted."""
        with self._lock:
            return sorted(self._values.items())


class LabeledHistogram:
    """Histograms by a tuple of label values (a bounded set: e.g. route templates)."""

    def __init__(self, buckets: tuple[float, ...] = LATENCY_BUCKETS) -> None:
        self._buckets = buckets
        self._lock = threading.Lock()
        self._values: dict[tuple[str, ...], Histogram] = {}

    def observe(self, labels: tuple[str, ...], value: float) -> None:
        """Record ``value`` under ``labels``."""
        h = self._values.get(labels)
        if h is None:
            with self._lock:
                h = self._values.setdefault(labels, Histogram(self._buckets))
        h.observe(value)

    def items(self) -> list[tuple[tuple[str, ...], Histogram]]:
        """(labels, histogram) pairs, sorted."""
        with self._lock:
            return sorted(self._values.items(), key=lambda kv: kv[0])


class Telemetry:
    """Every operational counter of one process (see the module docstring)."""

    def __init__(self) -> None:
        # outcome: applied / duplicate / rejected; code: the gRPC status name ("" if none)
        self.batches = LabeledCounter()
        self.samples = LabeledCounter()
        self.ack_latency = Histogram()
        self.wal_bytes = Counter()
        self.wal_fsync = Histogram()
        self.checkpoint = Histogram((0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120))
        self.snapshot_compute = Histogram()
        self.rest_requests = LabeledHistogram()  # (method, route template, status class)
        self.open_streams = Gauge()

    def batch_done(self, outcome: str, code: str = "", samples: int = 0) -> None:
        """Count one batch by outcome (``applied``, ``duplicate``, ``rejected``)."""
        self.batches.inc((outcome, code))
        if samples:
            self.samples.inc((outcome,), samples)

    def counted_stream(self, fn: Callable[..., Iterator]) -> Callable[..., Iterator]:
        """Wrap a streaming handler so that :attr:`open_streams` counts its live calls."""

        def wrapper(*args: object, **kwargs: object) -> Iterator:
            self.open_streams.add(1)
            try:
                yield from fn(*args, **kwargs)
            finally:
                self.open_streams.add(-1)

        wrapper.__name__ = getattr(fn, "__name__", "stream")
        wrapper.__doc__ = fn.__doc__
        return wrapper

    def counted_ack(self, fn: Callable[..., tuple | None]) -> Callable[..., tuple | None]:
        """Wrap the servicer's ``_answer`` (returns ``(Ack, lsn)``, or None for a batch
        not handled yet): count batches by outcome."""

        def wrapper(*args: object, **kwargs: object) -> tuple | None:
            answer = fn(*args, **kwargs)
            if answer is None:
                return None
            ack, lsn = answer
            if ack.error_code:
                self.batch_done("rejected", _code_name(ack.error_code))
            elif ack.duplicate:
                self.batch_done("duplicate")
            else:
                self.batch_done("applied", samples=ack.samples)
            return ack, lsn

        return wrapper


def _code_name(value: int) -> str:
    try:
        import grpc

        for code in grpc.StatusCode:
            if code.value[0] == value:
                return code.name
    except ImportError:  # pragma: no cover - grpc is a dependency of the service
        pass
    return str(value)


class AckClock:
    """Times batches from their arrival at the store to the moment they are durable.

    The store calls :meth:`start` with the log position a batch waits for and
    :meth:`done` when that position is durable (just before the servicer acks it);
    the time between goes into :attr:`Telemetry.ack_latency`. Positions never marked
    done (a stream cut before its ack) are forgotten past ``limit`` entries.

    >>> clock = AckClock(Telemetry())
    >>> clock.start(10); clock.done(10); clock.done(10)
    >>> clock.telemetry.ack_latency.snapshot()[0][-1]
    1
    """

    def __init__(self, telemetry: Telemetry | None = None, limit: int = 65536) -> None:
        self.telemetry = telemetry or TELEMETRY
        self._started: OrderedDict[int, float] = OrderedDict()
        self._limit = limit
        self._lock = threading.Lock()

    def start(self, lsn: int) -> None:
        """A batch waiting for ``lsn`` arrived now."""
        with self._lock:
            self._started.setdefault(lsn, time.perf_counter())
            if len(self._started) > self._limit:
                self._started.popitem(last=False)

    def done(self, lsn: int) -> None:
        """``lsn`` is durable: record the latency of the batch that waited for it (once)."""
        if not self._started:
            return
        with self._lock:
            t0 = self._started.pop(lsn, None)
        if t0 is not None:
            self.telemetry.ack_latency.observe(time.perf_counter() - t0)


TELEMETRY = Telemetry()
"""The process's counters."""
