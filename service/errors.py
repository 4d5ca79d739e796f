"""Domain errors of the service, independent of gRPC and HTTP.

Each front end maps them to its status codes in one place
(:mod:`rankboard.service.grpc_api`, :mod:`rankboard.service.rest.app`).

Example::

    >>> err = InvalidBatch("predictions has 3 values, labels 4")
    >>> err.code
    'INVALID_ARGUMENT'
"""

from __future__ import annotations

from typing import Any, ClassVar


class ServiceError(Exception):
    """Base of the service's domain errors; ``code`` names the gRPC status.

    A subclass names its status in its class statement
    (``class Gone(ServiceError, code="NOT_FOUND")``); one that names none keeps its
    parent's.
    """

    code: ClassVar[str] = "INTERNAL"

    def __init_subclass__(cls, *, code: str | None = None, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if code is not None:
            cls.code = code


class InvalidBatch(ServiceError, code="INVALID_ARGUMENT"):
    """A batch whose data is malformed (lengths, dtypes, NaN, labels, keys)."""


class DeclarationConflict(ServiceError, code="FAILED_PRECONDITION"):
    """A batch that declares other metrics than its run was declared with."""


class CapacityExceeded(ServiceError, code="RESOURCE_EXHAUSTED"):
    """A batch that would take the service over a cap on retained samples."""


class NotFound(ServiceError, code="NOT_FOUND"):
    """An experiment, arm, task, phase, step or metric that does not exist."""


class ShuttingDown(ServiceError, code="UNAVAILABLE"):
    """The service drains and takes no new batches."""


class InvalidQuery(ServiceError, code="INVALID_ARGUMENT"):
    """A query parameter that cannot be honoured (alpha, cluster column, horizon...)."""
