"""Dependencies shared by the REST routers: the store, the bearer tokens, query types.

The app factory (:func:`rankboard.service.rest.app.create_app`) puts the store on
``app.state.store``; routes get it through :data:`StoreDep`, so a router module holds
no state of its own and is tested through the app like every front end.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from typing import Annotated, Literal

from fastapi import Depends, Header, HTTPException, Query, Request

from rankboard.service.state.query import QueryParams
from rankboard.service.state.store import MetricStore

__all__ = ["NameParam", "Params", "Phase", "StoreDep", "bearer", "query_params"]

Phase = Literal["train", "eval"]
NameParam = Annotated[str, Query(min_length=1, max_length=128)]


def get_store(request: Request) -> MetricStore:
    """The store the app was created over."""
    store: MetricStore = request.app.state.store
    return store


StoreDep = Annotated[MetricStore, Depends(get_store)]


def query_params(
    alpha: Annotated[float, Query(gt=0, le=0.5, description="1 - confidence level")] = 0.05,
    cluster: Annotated[
        str | None,
        Query(
            max_length=128,
            description="grouping-key column whose values are the independent units"
            " (default: the run's only key column, if it has exactly one); `none`:"
            " independent samples",
        ),
    ] = None,
    sequential: Annotated[
        bool, Query(description="always-valid confidence sequences (safe to peek)")
    ] = False,
    horizon: Annotated[
        int | None,
        Query(ge=1, description="planned independent units, tunes sequential intervals"),
    ] = None,
    fresh: Annotated[
        bool, Query(description="wait for values that include every batch applied so far")
    ] = False,
) -> QueryParams:
    """How intervals are computed, from the query string (422 naming a bad field)."""
    return QueryParams(alpha, cluster, sequential, horizon, fresh).checked()


Params = Annotated[QueryParams, Depends(query_params)]


def bearer(token: str | None, what: str) -> Callable[..., Awaitable[None]]:
    """A dependency that requires ``Authorization: Bearer <token>`` (none when unset).

    Compared as bytes: a str ``compare_digest`` raises on non-ASCII (HTTP 500); headers
    arrive decoded as latin-1, so encoding them back gives the bytes sent.
    """
    expected = f"Bearer {token}".encode() if token else None

    async def check(authorization: Annotated[str | None, Header()] = None) -> None:
        if expected is None:
            return
        given = authorization.encode("latin-1", "replace") if authorization is not None else b""
        if authorization is None or not hmac.compare_digest(given, expected):
            raise HTTPException(
                401, f"missing or wrong {what} token", headers={"WWW-Authenticate": "Bearer"}
            )

    return check
