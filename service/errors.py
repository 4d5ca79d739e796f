"""Domain errors of the service, independent of gRPC and HTTP.

Each front end maps them to its status codes in one place
(:mod:`rankboard.service.grpc_api`, :mod:`rankboard.service.rest.app`).

Example::

    >>> err = InvalidBatch("predictions has 3 values, labels 4")
    >>> err.code
    'INVALID_ARGUMENT'
"""

from __future__ import annotations


class ServiceError(Exception):
    """Base of the service's domain errors; ``code`` names the gRPC status."""

    code = "INTERNAL"


class InvalidBatch(ServiceError):
    """A batch whose data is malformed (lengths, dtypes, NaN, labels, keys)."""

    code = "INVALID_ARGUMENT"


class DeclarationConflict(ServiceError):
    """A batch that declares other metrics than its run was declared with."""

    code = "FAILED_PRECONDITION"


class CapacityExceeded(ServiceError):
    """A batch that would take the service over a cap on retained samples."""

    code = "RESOURCE_EXHAUSTED"


class NotFound(ServiceError):
    """An experiment, arm, task, phase, step or metric that does not exist."""

    code = "NOT_FOUND"


class ShuttingDown(ServiceError):
    """The service drains and takes no new batches."""

    code = "UNAVAILABLE"


class InvalidQuery(ServiceError):
    """A query parameter that cannot be honoured (alpha, cluster column, horizon...)."""

    code = "INVALID_ARGUMENT"
