"""rankboard.trainer: optimizers and losses from tzrec configs, and the streaming client.

Example::

    >>> from rankboard.trainer import MetricsStream, build_optimizers, create_loss
    >>> MetricsStream.__name__
    'MetricsStream'
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "MetricsStream": "rankboard.trainer.client",
    "MetricsStreamError": "rankboard.trainer.client",
    "RejectedBatchesError": "rankboard.trainer.client",
    "build_optimizers": "rankboard.trainer.optim",
    "apply_sparse_optimizer": "rankboard.trainer.optim",
    "create_loss": "rankboard.trainer.loss",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    """Import the public names lazily, so ``import rankboard.trainer.optim`` stays light."""
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'rankboard.trainer' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
