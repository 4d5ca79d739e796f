"""The error of ``rankboard send``, how its messages name a row of the file, and its
output lines."""

from __future__ import annotations

import sys

__all__ = ["SendInputError", "row_ref", "say"]


class SendInputError(ValueError):
    """The file or the flags do not fit; the message names the column and row."""


def row_ref(row: int, csv: bool) -> str:
    """How a message names row ``row`` (0-based) of the data: CSV files by line too.

    >>> row_ref(0, csv=True), row_ref(4, csv=False)
    ('row 1 (line 2 of the file)', 'row 5')
    """
    return f"row {row + 1} (line {row + 2} of the file)" if csv else f"row {row + 1}"


def say(message: str) -> None:
    """One line of the command's output, on stderr (stdout stays free for data)."""
    print(f"rankboard send: {message}", file=sys.stderr, flush=True)
