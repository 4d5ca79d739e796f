"""Stream predictions and labels from a training loop to the rankboard service.

:class:`MetricsStream` is what a training loop calls once per step (and once per
eval batch). :meth:`MetricsStream.log` returns at once: the tensors are detached
and copied off the device (on a side CUDA stream for GPU tensors, a plain copy
on the CPU) and queued; a background thread batches, encodes and sends them over
the bidirectional ``rankboard.v1.Ingest/Stream`` call, and a second thread per
connection reads the acknowledgements.

Delivery, memory and errors
---------------------------
* **Idempotent producer.** Each stream is one producer, ``producer_id =
  "<run id>/rank<k>"``; every batch gets the next sequence number. Batches are
  kept until the service acknowledges them; after a reconnect every
  unacknowledged batch is sent again, in order, and the service's idempotency
  (sequence <= last applied of the producer -> ``duplicate``) keeps a batch
  from counting twice. Sequences start from the wall clock in microseconds,
  so a restarted trainer that reuses its producer id still moves forward.
* **Bounded memory; an outage does not stop training.** Queued records plus
  unacknowledged batches hold at most ``max_pending_samples`` samples in
  memory (about 20 bytes each). When the service is away or slower than
  training, ``when_full`` decides:

  - ``"spill"`` (the default): the oldest unacknowledged batches, already
    numbered, are written to a local spill file (in ``spill_dir``, default the
    system temp folder) and their memory freed, so :meth:`~MetricsStream.log`
    returns at once and training goes on. A warning says so (with the file and
    the count) when spilling starts and when the spilled batches are through.
    Spilled batches are re-sent from the file, in sequence order with their
    own sequence numbers, once the service is back, so nothing is lost or
    counted twice; :meth:`~MetricsStream.flush` waits for them too. Past
    ``max_spill_bytes`` on disk, ``log()`` blocks as with ``"block"``. The
    file is removed when empty and at :meth:`~MetricsStream.close` (what it
    still holds then is reported as never acknowledged).
  - ``"block"``: :meth:`~MetricsStream.log` waits for acknowledgements.
  - ``"drop"``: the new record is dropped and counted in
    :attr:`StreamStats.dropped_records` / ``dropped_samples`` (logged as a
    warning, and reported again by :meth:`~MetricsStream.close`).
* **Reconnects.** A broken stream is reopened after an exponential backoff
  with jitter (``backoff_initial`` doubling up to ``backoff_max``; the delay is
  drawn uniformly in [b/2, b]); the backoff resets once a stream gets an ack.
  ``UNAUTHENTICATED``, ``PERMISSION_DENIED`` and ``UNIMPLEMENTED`` are not
  retried: they make the stream fail, and :meth:`~MetricsStream.flush`,
  :meth:`~MetricsStream.close` and the next :meth:`~MetricsStream.log` raise
  :class:`MetricsStreamError`.
* **Rejected batches.** A batch the service refuses (``Ack.error_code != 0``)
  is not retried; it is counted in :attr:`StreamStats.rejected_batches`, kept
  as :attr:`StreamStats.last_error`, passed to ``on_rejected`` if given, and
  the next :meth:`~MetricsStream.flush` (or :meth:`~MetricsStream.close`)
  raises :class:`RejectedBatchesError` listing them with the service's
  messages (unless ``raise_on_rejected=False``).

Batching: consecutive records of the same (task, phase) and columns are sent as
one batch of at most ``max_batch_samples`` samples. A batch that holds several
steps carries one ``StepSegment`` per step, and the service applies each
segment as its own update, so each training step stays one update of the
service's decayed metrics however records are batched. The sender lingers up to
``linger`` seconds after a record is queued for more to join it (as Kafka's
``linger.ms``), unless a batch is full, :meth:`~MetricsStream.flush` or
:meth:`~MetricsStream.close` waits, or half the memory bound is in use: one
message per few training steps instead of one per step is what keeps the
client's CPU cost per step small.

Modules (the split of kafka-python's and librdkafka's producers)
---------------------------------------------------------------
* :mod:`~rankboard.trainer.client.stream`: :class:`MetricsStream`, the facade.
* :mod:`~rankboard.trainer.client.accumulator`: records, batching, linger, the
  memory bound and the ``when_full`` policy.
* :mod:`~rankboard.trainer.client.spill`: the spill file.
* :mod:`rankboard.protos.stream`: the sender (one stream, sequence numbers,
  acks, reconnects and re-sends) and the errors. It lives next to the protos
  because ``rankboard send`` (a service command that must not import the trainer
  package) delivers through it too; its names are re-exported here.
* :mod:`rankboard.protos.wire`: the wire codec (arrays, phases, declarations).

Logs go to the ``rankboard.trainer.client.*`` loggers (spilling, dropped records,
samples never acknowledged) and to ``rankboard.protos.stream`` (reconnects,
re-sends, rejected batches, fatal errors).

Example (needs a running service, hence skipped in doctests)::

    >>> from rankboard.trainer.client import MetricsStream
    >>> with MetricsStream("127.0.0.1:50051", experiment="exp1", arm="control",
    ...                    metrics={("ctr", "eval"): 'metrics { auc { thresholds: 0 } }'}
    ...                    ) as stream:  # doctest: +SKIP
    ...     stream.log(probs, clicks, task="ctr", phase="train", step=step)
    ...     stream.log(probs, clicks, task="ctr", phase="eval", step=step,
    ...                grouping_keys={"user": user_ids})
    ...     stream.flush()          # every ack received, or RejectedBatchesError
"""

from rankboard.protos.stream import (
    FlushTimeout,
    MetricsStreamError,
    RejectedBatchesError,
    Rejection,
)
from rankboard.protos.wire import parse_metrics
from rankboard.trainer.client.stream import (
    MetricsStream,
    StreamStats,
    default_rank,
    default_run_id,
)

__all__ = [
    "FlushTimeout",
    "MetricsStream",
    "MetricsStreamError",
    "RejectedBatchesError",
    "Rejection",
    "StreamStats",
    "default_rank",
    "default_run_id",
    "parse_metrics",
]
