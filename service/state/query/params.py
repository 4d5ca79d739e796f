"""Query parameters of the A/B statistics and the cluster column in effect."""

from __future__ import annotations

from dataclasses import dataclass

from rankboard.service.errors import InvalidQuery

__all__ = ["QueryParams", "resolve_cluster"]


@dataclass(frozen=True)
class QueryParams:
    """How to compute intervals: ``alpha``, ``cluster`` (a key column, ``"none"``, or None
    for the default), ``sequential`` (always-valid confidence sequences) and its
    ``horizon`` (planned number of independent units), and ``fresh`` (wait for values
    that include every batch applied so far)."""

    alpha: float = 0.05
    cluster: str | None = None
    sequential: bool = False
    horizon: int | None = None
    fresh: bool = False

    def checked(self) -> QueryParams:
        """Raise :class:`InvalidQuery` naming the field that is out of range."""
        if not (isinstance(self.alpha, float | int) and 0 < self.alpha <= 0.5):
            raise InvalidQuery(f"alpha must be in (0, 0.5], got {self.alpha}")
        if self.horizon is not None and self.horizon < 1:
            raise InvalidQuery(
                f"horizon must be >= 1 (planned independent units), got {self.horizon}"
            )
        return self


def resolve_cluster(requested: str | None, key_columns: list[str]) -> str | None:
    """The cluster key column in effect.

    None: the run's grouping-key column when it has exactly one, else independent
    samples; ``"none"``: independent samples; a name: that column (must exist).

    >>> resolve_cluster(None, ["user_id"]), resolve_cluster("none", ["user_id"])
    ('user_id', None)
    >>> resolve_cluster(None, ["user_id", "session"]) is None
    True
    """
    if requested is None:
        return key_columns[0] if len(key_columns) == 1 else None
    if requested == "none":
        return None
    if requested not in key_columns:
        raise InvalidQuery(
            f"cluster: unknown column {requested!r}; the run's grouping-key columns are"
            f" {', '.join(key_columns) or 'none'} (or cluster=none for independent samples)"
        )
    return requested
