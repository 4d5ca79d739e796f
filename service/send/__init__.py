"""``rankboard send``: stream a CSV or Parquet file of logged predictions.

It encodes the file's rows with the wire codec (:mod:`rankboard.protos.wire`)
and delivers them through the producers' sender
(:class:`rankboard.protos.stream.Sender`, which the trainers'
:class:`~rankboard.trainer.MetricsStream` uses too; no torch, no trainer
package), and exits non-zero with a message that names the column and row when
the file does not fit. This is how offline prediction dumps are evaluated.

What a new user can rely on:

* **Nothing is silently doubled.** A send's producer id and sequences are
  derived from a hash of the file's content and the target run (experiment,
  arm, task, phase, step, declaration, columns, filter and batch size: keep
  ``--batch-size`` when re-sending), so sending the same file to the same
  run again is a no-op that says so; a send that was interrupted completes on
  the next try without double-counting what got through. ``--replace`` sends
  it again on purpose (under a new producer id: its samples are added again).
* **Metrics are declared from what you say**, never inferred from the values:
  ``--metrics`` (tzrec text, see :func:`rankboard.protos.wire.parse_metrics`), or else ``--kind``
  (``binary``, the default: labels 0/1; ``regression``; ``multiclass``), whose
  metrics are listed by :func:`kind_declaration`. Labels that do not fit the
  kind are refused naming the column and row. The declaration is printed.
* **Keys may be strings.** Grouping keys (``--group-col``) and sample ids are
  int64 on the wire. Integer-looking values (``1002492``) are used as they are;
  any other value is hashed with :func:`stable_key_hash` (the first 8 bytes of
  BLAKE2b of its UTF-8 text, as a signed int64). The hash is stable across
  files, runs and machines. Two distinct keys collide with probability 2^-64
  per pair: about 2.7e-6 that any collision exists among 10 million distinct
  keys, and a collision merges two users' groups, nothing more.
* **One file, many arms.** ``--arm-col arm`` sends each arm's rows to its own
  run; ``--where col=value`` (repeatable, ``!=`` too) keeps matching rows only.
  A file with an arm-like column sent whole to one ``--arm`` gets a warning.
* **It fails fast.** ``--timeout`` bounds how long it waits for the service:
  to connect ("cannot reach the service at HOST:PORT"), and for progress while
  sending. The progress bar counts samples the service acknowledged.
  ``--dry-run`` reads and checks the file and prints what would be declared.

The command's modules: :mod:`.command` (flags, entry point), :mod:`.declare`
(``--metrics`` / ``--kind``), :mod:`.table` (reading and checking the file),
:mod:`.keys` (int64 keys), :mod:`.prepare` (columns, parts per arm, producer ids),
:mod:`.deliver` (senders, progress, outcome), :mod:`.errors`.
"""

from __future__ import annotations

from typing import Any

from rankboard.service.send.command import add_send_parser, send
from rankboard.service.send.declare import KINDS, kind_declaration, validate_metrics_text
from rankboard.service.send.errors import SendInputError
from rankboard.service.send.keys import key_column, stable_key_hash
from rankboard.service.send.table import read_table

__all__ = [
    "KINDS",
    "SendInputError",
    "add_send_parser",
    "key_column",
    "kind_declaration",
    "read_table",
    "send",
    "stable_key_hash",
    "validate_metrics_text",
]

# Loaded when first used (numpy, the wire codec): `rankboard --help` loads neither.
# ``metric_blocks`` and ``_SCALAR_FIELDS`` are the wire codec's; ``_prepare`` is
# :func:`rankboard.service.send.prepare.prepare`.
_LAZY = {
    "metric_blocks": ("rankboard.protos.wire", "metric_blocks"),
    "_SCALAR_FIELDS": ("rankboard.protos.wire", "SCALAR_FIELDS"),
    "_prepare": ("rankboard.service.send.prepare", "prepare"),
}


def __getattr__(name: str) -> Any:
    """The lazily loaded names of ``_LAZY``, importable from here too."""
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
