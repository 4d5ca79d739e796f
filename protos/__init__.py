"""rankboard.protos: tzrec-compatible config messages and the rankboard.v1 API.

The ``*_pb2`` modules are generated from the ``.proto`` files of this folder by
``make protos`` (``python protos/generate.py``); they are not committed.

Example::

    >>> from rankboard.protos import parse_text, metric_pb2
    >>> parse_text('auc { thresholds: 0 }', metric_pb2.MetricConfig()).auc.thresholds
    0
"""

from rankboard.protos.text import ConfigError, parse_text

__all__ = ["ConfigError", "parse_text"]
