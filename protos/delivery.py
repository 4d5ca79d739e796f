"""What a producer's delivery reports: refused batches and the errors of a stream.

Shared by :class:`rankboard.protos.stream.Sender`, the trainers'
:class:`rankboard.trainer.MetricsStream` and ``rankboard send``.

Example::

    >>> print(RejectedBatchesError([Rejection(4, "ctr", "eval", 0, 8, 3, "labels must be 0 or 1")]))
    the rankboard service rejected 1 batch:
      batch 4 (task ctr, eval, step 0, 8 samples): INVALID_ARGUMENT: labels must be 0 or 1
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import grpc

__all__ = ["FlushTimeout", "MetricsStreamError", "RejectedBatchesError", "Rejection"]

_CODE_NAMES = {code.value[0]: code.name for code in grpc.StatusCode}


class MetricsStreamError(RuntimeError):
    """The stream cannot deliver: authentication failed, closed, or a fatal gRPC error."""


class FlushTimeout(MetricsStreamError, TimeoutError):
    """A flush ran out of time with samples still unacknowledged."""


@dataclass(frozen=True)
class Rejection:
    """A batch the service refused; it changed nothing on the service.

    >>> r = Rejection(sequence=7, task="ctr", phase="eval", step=3, samples=10,
    ...               code=3, message="labels must be 0 or 1")
    >>> str(r)
    'batch 7 (task ctr, eval, step 3, 10 samples): INVALID_ARGUMENT: labels must be 0 or 1'
    """

    sequence: int
    task: str
    phase: str
    step: int
    samples: int
    code: int
    message: str

    @property
    def code_name(self) -> str:
        """The gRPC status name of :attr:`code` (``INVALID_ARGUMENT``, ...)."""
        return _CODE_NAMES.get(self.code, str(self.code))

    def __str__(self) -> str:
        return (
            f"batch {self.sequence} (task {self.task}, {self.phase}, step {self.step}, "
            f"{self.samples} samples): {self.code_name}: {self.message}"
        )


class RejectedBatchesError(MetricsStreamError):
    """Raised by a flush when the service refused batches.

    >>> err = RejectedBatchesError([Rejection(1, "ctr", "eval", 0, 5, 9, "metrics differ")])
    >>> print(err)
    the rankboard service rejected 1 batch:
      batch 1 (task ctr, eval, step 0, 5 samples): FAILED_PRECONDITION: metrics differ
    """

    def __init__(self, rejections: Sequence[Rejection], more: int = 0) -> None:
        self.rejections = list(rejections)
        total = len(self.rejections) + more
        lines = [f"the rankboard service rejected {total} batch{'es' if total != 1 else ''}:"]
        lines += [f"  {r}" for r in self.rejections]
        if more:
            lines.append(f"  ... and {more} more")
        super().__init__("\n".join(lines))
