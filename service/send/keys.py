"""Grouping keys and sample ids as int64: integers kept, any other text hashed.

Integer-looking values (``1002492``) are used as they are; any other value is hashed
with :func:`stable_key_hash` (the first 8 bytes of BLAKE2b of its UTF-8 text, as a
signed int64), stable across files, runs and machines.
"""

from __future__ import annotations

import hashlib
import re
from typing import TYPE_CHECKING, Any

from rankboard.service.send.errors import SendInputError, row_ref

if TYPE_CHECKING:  # numpy is imported inside the functions that need it
    import numpy as np

__all__ = ["key_column", "stable_key_hash"]

_INT_TEXT = re.compile(r"^\s*[+-]?\d{1,19}\s*$")


def stable_key_hash(text: str) -> int:
    """The int64 key of a non-integer key value: BLAKE2b-64 of its UTF-8 bytes, signed.

    Stable across processes and machines (unlike Python's ``hash``).

    >>> stable_key_hash("u1002492")
    8776210923635343167
    >>> stable_key_hash("u1002492") == stable_key_hash("u1002492")
    True
    """
    digest = hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little", signed=True)


def key_column(values: Any, name: str, *, csv: bool = False) -> np.ndarray:
    """int64 keys of a column: integers as they are, any other text hashed.

    Integer-looking text (``"42"``) stays the integer 42, so a column gets the
    same keys whether a file stored it as numbers or as text; other values go
    through :func:`stable_key_hash`. Empty cells and non-integral numbers are
    refused, naming the column and row.

    >>> import numpy as np
    >>> key_column(np.array(["7", "u1", "7"], dtype=object), "user").tolist() == [
    ...     7, stable_key_hash("u1"), 7]
    True
    >>> try:
    ...     key_column(np.array([1.0, 2.5]), "user")
    ... except SendInputError as err:
    ...     print(err)
    column 'user', row 2: 2.5 is not an integer key
    """
    import numpy as np

    arr = np.asarray(values)
    if arr.dtype.kind in "iub":
        return arr.astype(np.int64)
    if arr.dtype.kind == "f":
        bad = ~np.isfinite(arr) | (arr != np.round(arr))
        if bad.any():
            row = int(np.argmax(bad))
            what = "empty" if np.isnan(arr[row]) else f"{arr[row]:g} is not an integer key"
            raise SendInputError(f"column {name!r}, {row_ref(row, csv)}: {what}")
        return arr.astype(np.int64)
    uniques, inverse = np.unique(arr.astype(object).astype(str), return_inverse=True)
    codes = np.empty(len(uniques), dtype=np.int64)
    nulls = set()
    for i, text in enumerate(uniques):
        if _INT_TEXT.match(text) and -(2**63) <= int(text) < 2**63:
            codes[i] = int(text)
        else:
            if text in ("None", "nan", ""):
                nulls.add(i)
            codes[i] = stable_key_hash(text)
    if nulls:
        missing = np.array([v is None or (isinstance(v, float) and v != v) for v in arr])
        if missing.any():
            row = int(np.argmax(missing))
            raise SendInputError(f"column {name!r}, {row_ref(row, csv)}: empty key")
    return codes[inverse.reshape(-1)]
