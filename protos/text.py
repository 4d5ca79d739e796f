"""Parse protobuf text-format configs with errors that name the line.

Example::

    >>> from rankboard.protos import optimizer_pb2
    >>> cfg = parse_text("sgd_optimizer { lr: 0.1 }", optimizer_pb2.SparseOptimizer())
    >>> round(cfg.sgd_optimizer.lr, 3)
    0.1
    >>> try:
    ...     parse_text("sgd_optimizer { lrr: 0.1 }", optimizer_pb2.SparseOptimizer())
    ... except ConfigError as err:
    ...     print(err)  # doctest: +ELLIPSIS
    config line 1, column 17: Message type ... has no field named "lrr".
"""

from __future__ import annotations

from pathlib import Path
from typing import TypeVar

from google.protobuf import message, text_format

M = TypeVar("M", bound=message.Message)


class ConfigError(ValueError):
    """A config text that does not parse into its message (names line and column)."""


def parse_text(text: str, msg: M, *, source: str = "config") -> M:
    """Merge protobuf text ``text`` into ``msg`` and return it.

    Unknown fields, wrong types and missing required fields raise
    :class:`ConfigError` naming ``source`` and the line.
    """
    try:
        text_format.Parse(text, msg)
    except text_format.ParseError as err:
        line, col = err.GetLine(), err.GetColumn()
        where = f"{source} line {line}, column {col}" if line else source
        # ParseError's text starts with its own "line:column : "; ours says it in words
        detail = str(err).removeprefix(f"{line}:{col} : ")
        raise ConfigError(f"{where}: {detail}") from None
    # on every Message at run time; absent from the types-protobuf stubs
    missing = msg.FindInitializationErrors()  # type: ignore[attr-defined]
    if missing:
        raise ConfigError(f"{source}: missing required field(s): {', '.join(missing)}")
    return msg


def parse_file(path: str | Path, msg: M) -> M:
    """Parse the text-format file at ``path`` into ``msg``; see :func:`parse_text`."""
    path = Path(path)
    return parse_text(path.read_text(), msg, source=str(path))
