"""Reading the file and checking its columns: numbers, labels for a ``--kind``, ``--where``.

Every refusal is a :class:`~rankboard.service.send.errors.SendInputError` naming the
column and the row. pyarrow and numpy are imported inside the functions.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rankboard.service.send.errors import SendInputError, row_ref

if TYPE_CHECKING:
    import numpy as np

__all__ = ["check_labels", "file_digest", "numeric_column", "parse_where", "read_table"]


def read_table(path: Path, columns: list[str] | None = None) -> Any:
    """The file as a ``pyarrow.Table`` (all columns, or ``columns``); exits on a bad file."""
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    if not path.exists():
        raise SendInputError(f"{path} does not exist")
    suffix = path.suffix.lower()
    try:
        if suffix in (".parquet", ".pq"):
            table = pq.read_table(path)
        elif suffix in (".csv", ".tsv", ".txt"):
            opts = pacsv.ParseOptions(delimiter="\t" if suffix == ".tsv" else ",")
            table = pacsv.read_csv(path, parse_options=opts)
        else:
            raise SendInputError(f"{path}: use a .csv, .tsv or .parquet file")
    except pa.ArrowInvalid as err:
        raise SendInputError(f"{path}: cannot read it: {err}") from None
    if columns is not None:
        missing = [c for c in columns if c not in table.column_names]
        if missing:
            raise SendInputError(
                f"{path} has no column(s) {', '.join(missing)}"
                f" (columns: {', '.join(table.column_names)})"
            )
        table = table.select(list(dict.fromkeys(columns)))
    return table


def numeric_column(table: Any, name: str, csv: bool, what: str) -> np.ndarray:
    """float64 values of a column; text or empty cells refused naming the row."""
    import numpy as np
    import pyarrow as pa

    col = table.column(name)
    if (
        pa.types.is_integer(col.type)
        or pa.types.is_floating(col.type)
        or pa.types.is_boolean(col.type)
    ):
        arr = col.to_numpy(zero_copy_only=False).astype(np.float64)
        bad = np.isnan(arr)
        if bad.any():
            row = int(np.argmax(bad))
            raise SendInputError(f"column {name!r} ({what}), {row_ref(row, csv)}: empty")
        return arr
    values = col.to_pylist()
    out = np.empty(len(values), dtype=np.float64)
    for row, v in enumerate(values):
        try:
            out[row] = float(v)
            if v is None or out[row] != out[row]:
                raise ValueError
        except (TypeError, ValueError):
            shown = "empty" if v in (None, "") else f"{v!r} is not a number"
            raise SendInputError(
                f"column {name!r} ({what}), {row_ref(row, csv)}: {shown}; {what} must be numbers"
            ) from None
    return out


def check_labels(labels: np.ndarray, name: str, kind: str, classes: int, csv: bool) -> None:
    import numpy as np

    if kind == "binary":
        bad = (labels != 0) & (labels != 1)
        fix = (
            "with --kind binary (the default) labels must be 0 or 1; for real-valued"
            " labels use --kind regression"
        )
    elif kind == "multiclass":
        bad = (labels != np.round(labels)) | (labels < 0) | (labels >= classes)
        fix = f"with --kind multiclass labels are class indices 0..{classes - 1}"
    else:
        bad = ~np.isfinite(labels)
        fix = "labels must be finite numbers"
    if bad.any():
        row = int(np.argmax(bad))
        raise SendInputError(
            f"column {name!r} (labels), {row_ref(row, csv)}: {labels[row]:g} does not fit"
            f" --kind {kind} ({int(bad.sum())} such rows); {fix}"
        )


def parse_where(specs: list[str], table: Any, csv: bool) -> np.ndarray:
    """Boolean mask of the rows every ``--where`` spec keeps."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    keep = np.ones(table.num_rows, dtype=bool)
    for spec in specs:
        m = re.match(r"^([^=!]+?)\s*(!=|==|=)\s*(.*)$", spec)
        if not m:
            raise SendInputError(f"--where {spec!r}: write COL=VALUE or COL!=VALUE")
        name, op, value = m.group(1).strip(), m.group(2), m.group(3).strip()
        if name not in table.column_names:
            raise SendInputError(
                f"--where {spec!r}: no column {name!r} (columns: {', '.join(table.column_names)})"
            )
        col = table.column(name)
        if pa.types.is_integer(col.type) or pa.types.is_floating(col.type):
            try:
                target = float(value)
            except ValueError:
                raise SendInputError(
                    f"--where {spec!r}: column {name!r} holds numbers, {value!r} is not one"
                ) from None
            hit = col.to_numpy(zero_copy_only=False).astype(np.float64) == target
        else:
            text = pc.cast(col, pa.string()).to_numpy(zero_copy_only=False).astype(object)
            hit = text == value
        keep &= ~hit if op == "!=" else hit
    return keep


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
