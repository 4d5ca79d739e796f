"""Asymptotic confidence sequences: intervals valid under continuous peeking.

Waudby-Smith, Arbour, Sinha, Kennedy, Ramdas, "Time-uniform central limit theory and
asymptotic confidence sequences" (arXiv 2103.06476), Theorem 2.2 (the two-sided normal
mixture boundary): with ``t`` independent units seen so far and ``σ̂_t`` the standard
deviation of one unit's influence value (here ``SE · sqrt(t)``),

    θ̂_t ± σ̂_t · sqrt( 2 (t ρ² + 1) / (t² ρ²) · log( sqrt(t ρ² + 1) / α ) )

covers θ at every ``t`` simultaneously with probability ``≥ 1 - α`` (asymptotically).
``ρ² > 0`` is fixed in advance; it makes the sequence tightest near a planned number of
units ``t*`` (``horizon``). We use the paper's closed-form (Lambert-W asymptotic)
optimum ``ρ² = (-2 log α + log(-2 log α + 1)) / t*``, as the authors' code does
(``best_rho2_approx``); at ``t = t*`` its width is within 0.003 % (α = 0.05) to 0.2 %
(α = 0.5) of the numerically optimal ``ρ``'s.

The always-valid p-value is the smallest level whose sequence (with ``ρ`` fixed from the
requested ``alpha``) excludes zero: with ``z = θ̂ / SE`` and ``x = t ρ²``,
``p = min(1, sqrt(x + 1) · exp(-z² x / (2 (x + 1))))`` — the reciprocal of the normal
mixture martingale, so ``P(∃t: p_t ≤ a) ≤ a`` for every ``a`` (Ville's inequality;
asymptotically, as the sequence itself).

``DEFAULT_HORIZON`` is 100 000 units (clusters or samples): a typical eval set of users.
A horizon far from the real number of units still gives valid sequences, only wider.
"""

from __future__ import annotations

import math

from rankboard.service.metrics.stats.columns import StatsInputError

__all__ = [
    "DEFAULT_HORIZON",
    "always_valid_p_value",
    "cs_half_width",
    "rho2_for_horizon",
    "validate_alpha",
    "validate_horizon",
]

DEFAULT_HORIZON = 100_000


def validate_alpha(alpha: float) -> float:
    """``alpha`` as a float; ``StatsInputError`` (field ``alpha``) outside (0, 0.5].

    >>> validate_alpha(0.05)
    0.05
    >>> validate_alpha(0.6)
    Traceback (most recent call last):
    ...
    rankboard.service.metrics.stats.columns.StatsInputError: alpha must be in (0, 0.5], got 0.6
    """
    try:
        a = float(alpha)
    except (TypeError, ValueError):
        raise StatsInputError("alpha", f"alpha must be a number, got {alpha!r}") from None
    if not 0.0 < a <= 0.5:  # also refuses NaN
        raise StatsInputError("alpha", f"alpha must be in (0, 0.5], got {alpha}")
    return a


def validate_horizon(horizon: int | None) -> int:
    """``horizon`` as an int (``DEFAULT_HORIZON`` for None); ``StatsInputError`` (field
    ``horizon``) below 1 or not an integer.

    >>> validate_horizon(None), validate_horizon(5000)
    (100000, 5000)
    """
    if horizon is None:
        return DEFAULT_HORIZON
    if isinstance(horizon, bool) or not isinstance(horizon, int | float):
        raise StatsInputError("horizon", f"horizon must be an integer >= 1, got {horizon!r}")
    if not math.isfinite(horizon) or horizon != int(horizon) or horizon < 1:
        raise StatsInputError("horizon", f"horizon must be an integer >= 1, got {horizon!r}")
    return int(horizon)


def rho2_for_horizon(alpha: float, horizon: int) -> float:
    """``ρ²`` that makes the sequence tightest near ``horizon`` units.

    >>> round(rho2_for_horizon(0.05, 1000), 8)
    0.00793615
    """
    la = -2.0 * math.log(alpha)
    return (la + math.log(la + 1.0)) / horizon


def cs_half_width(se: float, units: int, alpha: float, horizon: int) -> float:
    """Half-width of the confidence sequence at ``units`` independent units.

    ``se`` is the (fixed-horizon) standard error of the estimate; the result is always
    wider than the fixed ``z_{1-α/2} · se``.

    >>> hw = cs_half_width(0.01, 1000, 0.05, 1000)
    >>> round(hw / 0.01, 3)  # in units of the standard error; 1.96 for a fixed interval
    3.035
    """
    t = float(units)
    x = t * rho2_for_horizon(alpha, horizon)
    sigma_t = se * math.sqrt(t)
    return sigma_t * math.sqrt(2.0 * (x + 1.0) / (t * x) * math.log(math.sqrt(x + 1.0) / alpha))


def always_valid_p_value(
    estimate: float, se: float, units: int, alpha: float, horizon: int
) -> float:
    """Always-valid two-sided p-value of ``H0: θ = 0`` matching :func:`cs_half_width`.

    ``p <= alpha`` exactly when the sequence at level ``alpha`` excludes zero.

    >>> p = always_valid_p_value(0.031, 0.01, 1000, 0.05, 1000)
    >>> round(p, 4), 0.031 > cs_half_width(0.01, 1000, 0.05, 1000)
    (0.0419, True)
    """
    if se <= 0:
        return 0.0 if estimate != 0 else 1.0
    x = float(units) * rho2_for_horizon(alpha, horizon)
    z2 = (estimate / se) ** 2
    log_p = 0.5 * math.log1p(x) - z2 * x / (2.0 * (x + 1.0))
    return min(1.0, math.exp(log_p))
