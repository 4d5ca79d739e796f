"""``type=`` converters for the subcommands' argparse flags (light: stdlib only).

Example::

    >>> positive = float_where(lambda x: x > 0, "> 0")
    >>> positive("2.5")
    2.5
    >>> positive("0")
    Traceback (most recent call last):
    ...
    argparse.ArgumentTypeError: must be > 0, got 0
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

__all__ = ["float_where"]


def float_where(ok: Callable[[float], bool], rule: str) -> Callable[[str], float]:
    """A converter to ``float`` that refuses what is not a number, and a number for which
    ``ok`` is false (NaN included) with ``must be <rule>, got <value>``."""

    def parse(value: str) -> float:
        try:
            number = float(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {value!r}") from None
        if not ok(number):
            raise argparse.ArgumentTypeError(f"must be {rule}, got {value}")
        return number

    return parse
