"""``rankboard send``: stream a CSV or Parquet file of logged predictions.

It encodes the file's rows with the wire codec (:mod:`rankboard.protos.wire`)
and delivers them through the producers' sender
(:class:`rankboard.protos.stream.Sender`, which the trainers'
:class:`~rankboard.trainer.MetricsStream` uses too; no torch, no trainer
package), and exits non-zero with a message that names the column and row when
the file does not fit. This is how offline prediction dumps are evaluated.

What a new user can rely on:

* **Nothing is silently doubled.** A send's producer id and sequences are
  derived from a hash of the file's content and the target run (experiment,
  arm, task, phase, step, declaration, columns, filter and batch size: keep
  ``--batch-size`` when re-sending), so sending the same file to the same
  run again is a no-op that says so; a send that was interrupted completes on
  the next try without double-counting what got through. ``--replace`` sends
  it again on purpose (under a new producer id: its samples are added again).
* **Metrics are declared from what you say**, never inferred from the values:
  ``--metrics`` (tzrec text, see :func:`rankboard.protos.wire.parse_metrics`), or else ``--kind``
  (``binary``, the default: labels 0/1; ``regression``; ``multiclass``), whose
  metrics are listed by :func:`kind_declaration`. Labels that do not fit the
  kind are refused naming the column and row. The declaration is printed.
* **Keys may be strings.** Grouping keys (``--group-col``) and sample ids are
  int64 on the wire. Integer-looking values (``1002492``) are used as they are;
  any other value is hashed with :func:`stable_key_hash` (the first 8 bytes of
  BLAKE2b of its UTF-8 text, as a signed int64). The hash is stable across
  files, runs and machines. Two distinct keys collide with probability 2^-64
  per pair: about 2.7e-6 that any collision exists among 10 million distinct
  keys, and a collision merges two users' groups, nothing more.
* **One file, many arms.** ``--arm-col arm`` sends each arm's rows to its own
  run; ``--where col=value`` (repeatable, ``!=`` too) keeps matching rows only.
  A file with an arm-like column sent whole to one ``--arm`` gets a warning.
* **It fails fast.** ``--timeout`` bounds how long it waits for the service:
  to connect ("cannot reach the service at HOST:PORT"), and for progress while
  sending. The progress bar counts samples the service acknowledged.
  ``--dry-run`` reads and checks the file and prints what would be declared.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # heavy imports happen inside the functions that need them
    import numpy as np

__all__ = [
    "KINDS",
    "SendInputError",
    "add_send_parser",
    "key_column",
    "kind_declaration",
    "read_table",
    "send",
    "stable_key_hash",
    "validate_metrics_text",
]

KINDS = ("binary", "regression", "multiclass")
_ARM_LIKE = {"arm", "arms", "variant", "arm_name", "variant_name", "bucket", "treatment_arm"}
_INT_TEXT = re.compile(r"^\s*[+-]?\d{1,19}\s*$")


class SendInputError(ValueError):
    """The file or the flags do not fit; the message names the column and row."""


# ---------------------------------------------------------------- --metrics text
# One parser of declarations, in the wire codec (rankboard.protos.wire). It is imported when
# first used: `rankboard --help` and flag parsing load no numpy.
_FROM_WIRE = {"metric_blocks": "metric_blocks", "_SCALAR_FIELDS": "SCALAR_FIELDS"}


def __getattr__(name: str) -> Any:
    """``metric_blocks`` and ``_SCALAR_FIELDS``: the codec's, importable from here too."""
    if name in _FROM_WIRE:
        from rankboard.protos import wire

        return getattr(wire, _FROM_WIRE[name])
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def validate_metrics_text(text: str, phase: str) -> None:
    """Check ``--metrics`` text field by field; errors point into the text as typed.

    The parser is :func:`rankboard.protos.wire.parse_metrics`.

    >>> validate_metrics_text('auc {} grouped_auc { grouping_key: "u" }', "eval")
    >>> try:
    ...     validate_metrics_text('auc {} gauc { grouping_key: "u" }', "eval")
    ... except SendInputError as err:
    ...     print(str(err)[:90])
    --metrics: unknown metric 'gauc' at character 8 (did you mean grouped_auc?); valid metrics
    """
    _declared_configs(text, phase)


def _declared_configs(text: str, phase: str) -> list[Any]:
    """The metric configs of ``--metrics`` text; errors point into the text as typed."""
    from rankboard.protos import wire

    try:
        return wire.parse_metrics(phase, text, source="--metrics")
    except ValueError as err:  # DeclarationError, ConfigError
        raise SendInputError(str(err)) from None


def kind_declaration(kind: str, phase: str, group_cols: list[str]) -> str:
    """The metrics ``--kind`` declares when ``--metrics`` is not given (tzrec text).

    eval: binary -> exact AUC, normalized entropy, and grouped AUC per
    ``--group-col``; regression -> exact XAUC, MSE, MAE; multiclass -> exact
    multi-class AUC and accuracy. train: decayed AUC, MSE or accuracy.

    >>> kind_declaration("binary", "eval", ["user_id"])
    'auc { thresholds: 0 } normalized_entropy {} grouped_auc { grouping_key: "user_id" }'
    >>> kind_declaration("regression", "eval", [])
    'xauc {} mean_squared_error {} mean_absolute_error {}'
    """
    if kind not in KINDS:
        raise SendInputError(f"--kind must be one of {', '.join(KINDS)}, not {kind!r}")
    if phase == "train":
        return {
            "binary": "auc {}",
            "regression": "mean_squared_error {}",
            "multiclass": "accuracy {}",
        }[kind]
    if kind == "binary":
        parts = ["auc { thresholds: 0 }", "normalized_entropy {}"]
        parts += [f'grouped_auc {{ grouping_key: "{g}" }}' for g in group_cols]
        return " ".join(parts)
    if kind == "regression":
        return "xauc {} mean_squared_error {} mean_absolute_error {}"
    return "multiclass_auc { thresholds: 0 } accuracy {}"


# ---------------------------------------------------------------- keys
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


def _row_ref(row: int, csv: bool) -> str:
    return f"row {row + 1} (line {row + 2} of the file)" if csv else f"row {row + 1}"


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
            raise SendInputError(f"column {name!r}, {_row_ref(row, csv)}: {what}")
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
            raise SendInputError(f"column {name!r}, {_row_ref(row, csv)}: empty key")
    return codes[inverse.reshape(-1)]


# ---------------------------------------------------------------- reading
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


def _numeric(table: Any, name: str, csv: bool, what: str) -> np.ndarray:
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
            raise SendInputError(f"column {name!r} ({what}), {_row_ref(row, csv)}: empty")
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
                f"column {name!r} ({what}), {_row_ref(row, csv)}: {shown}; {what} must be numbers"
            ) from None
    return out


def _check_labels(labels: np.ndarray, name: str, kind: str, classes: int, csv: bool) -> None:
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
            f"column {name!r} (labels), {_row_ref(row, csv)}: {labels[row]:g} does not fit"
            f" --kind {kind} ({int(bad.sum())} such rows); {fix}"
        )


# ---------------------------------------------------------------- the command
def add_send_parser(sub: argparse._SubParsersAction) -> None:
    """Register the ``send`` subcommand."""
    p = sub.add_parser(
        "send",
        help="stream a CSV/Parquet file of predictions to the service",
        description="Stream a CSV/TSV/Parquet file of predictions and labels to the"
        " service. Sending the same file to the same run again changes nothing"
        " (use --replace to add it again on purpose).",
    )
    p.add_argument("file", type=Path, help="a .csv, .tsv or .parquet file")
    p.add_argument("--target", default="127.0.0.1:50051", help="the service's gRPC host:port")
    p.add_argument("--experiment", required=True)
    arms = p.add_mutually_exclusive_group(required=True)
    arms.add_argument("--arm", help="send every row to this arm")
    arms.add_argument("--arm-col", help="column naming each row's arm (one run per arm)")
    p.add_argument(
        "--where",
        action="append",
        default=[],
        metavar="COL=VALUE",
        help="keep rows whose COL equals VALUE (COL!=VALUE: differs); repeatable, all must hold",
    )
    p.add_argument("--task", required=True)
    p.add_argument("--phase", default="eval", choices=["train", "eval"], help="default eval")
    p.add_argument("--step", type=int, default=0, help="eval step / training step (default 0)")
    p.add_argument(
        "--kind",
        default=None,
        choices=KINDS,
        help="what the labels are, which picks the metrics when --metrics is not given:"
        " binary (default; labels 0/1: AUC, NE, grouped AUC per --group-col), regression"
        " (XAUC, MSE, MAE), multiclass (--pred-col p0,p1,...; multi-class AUC, accuracy)",
    )
    p.add_argument(
        "--metrics",
        default=None,
        help="metric declaration, e.g. 'auc {} grouped_auc { grouping_key: \"user_id\" }'",
    )
    p.add_argument(
        "--pred-col", default="prediction", help="prediction column (multiclass: c0,c1,...)"
    )
    p.add_argument("--label-col", default="label")
    p.add_argument(
        "--group-col",
        action="append",
        default=[],
        help="grouping key column (repeatable); its name is the grouping_key; text keys"
        " are hashed (stable 64-bit BLAKE2b), integer keys kept",
    )
    p.add_argument("--weight-col", default=None)
    p.add_argument(
        "--sample-id-col",
        default=None,
        help="column of sample ids (same eval set scored by several arms: paired comparisons)",
    )
    p.add_argument("--batch-size", type=int, default=65_536)
    p.add_argument("--token", default=None, help="write token (or RANKBOARD_TOKEN)")
    p.add_argument(
        "--timeout",
        type=float,
        default=20.0,
        help="seconds to wait for the service: to connect, and for progress while sending"
        " (default 20)",
    )
    p.add_argument(
        "--replace",
        action="store_true",
        help="send the file again although this run has it already (its samples are added"
        " again, under a new producer id)",
    )
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="read and check the file, print what would be sent and declared; send nothing",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument(
        "--producer-id",
        default=None,
        help="producer id (default: derived from the file's content and the target run)",
    )
    p.set_defaults(func=send)


@dataclass
class _Part:
    """The rows of one arm."""

    arm: str
    rows: np.ndarray  # row numbers in the file
    producer_id: str = ""
    stream: Any = None
    stats: Any = None
    batches: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


def _parse_where(specs: list[str], table: Any, csv: bool) -> np.ndarray:
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


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def send(args: argparse.Namespace) -> int:
    """Run ``rankboard send``: 0 when every sample was applied (or was there already).

    1 when the service refused a batch or stopped answering, 2 when the file or
    flags do not fit or the service cannot be reached.
    """
    try:
        prepared = _prepare(args)
    except SendInputError as err:
        print(f"rankboard send: {err}", file=sys.stderr)
        return 2
    if args.dry_run:
        return 0
    return _stream(args, *prepared)


def _prepare(args: argparse.Namespace) -> tuple[dict[str, np.ndarray], list[_Part], str]:
    import numpy as np

    say = _say
    if args.batch_size < 1:
        raise SendInputError(f"--batch-size must be positive, got {args.batch_size}")
    kind = args.kind or ("binary" if not args.metrics else None)
    pred_cols = [c.strip() for c in args.pred_col.split(",") if c.strip()]
    if (kind == "multiclass") != (len(pred_cols) > 1) and kind is not None:
        raise SendInputError(
            "--kind multiclass takes one prediction column per class (--pred-col c0,c1,...)"
            if kind == "multiclass"
            else f"--pred-col has {len(pred_cols)} columns: that is --kind multiclass"
        )
    if args.metrics:
        configs = _declared_configs(args.metrics, args.phase)
        declaration = args.metrics
        for cfg in configs:
            which = cfg.WhichOneof("metric")
            key = getattr(getattr(cfg, which), "grouping_key", None) if which else None
            if key and key not in args.group_col:
                raise SendInputError(
                    f"--metrics: {which} groups by {key!r}, which is not a --group-col"
                    f" (add --group-col {key})"
                )
    else:
        declaration = kind_declaration(kind or "binary", args.phase, args.group_col)

    csv = args.file.suffix.lower() in (".csv", ".tsv", ".txt")
    table = read_table(args.file)
    needed = [*pred_cols, args.label_col, *args.group_col]
    for opt in ("weight_col", "sample_id_col", "arm_col"):
        if getattr(args, opt):
            needed.append(getattr(args, opt))
    missing = [c for c in needed if c not in table.column_names]
    if missing:
        raise SendInputError(
            f"{args.file} has no column(s) {', '.join(missing)}"
            f" (columns: {', '.join(table.column_names)})"
        )
    keep = _parse_where(args.where, table, csv)

    preds = np.stack([_numeric(table, c, csv, "predictions") for c in pred_cols], axis=1)
    labels = _numeric(table, args.label_col, csv, "labels")
    if kind is not None:
        _check_labels(labels, args.label_col, kind, len(pred_cols), csv)
    if kind == "binary" and not args.metrics:
        outside = (preds < 0) | (preds > 1)
        if outside.any():
            row = int(np.argmax(outside.any(axis=1)))
            raise SendInputError(
                f"column {pred_cols[0]!r} (predictions), {_row_ref(row, csv)}:"
                f" {preds[row, 0]:g} is not a probability in [0, 1] ({int(outside.sum())} such"
                " rows); --kind binary declares normalized entropy, which needs probabilities:"
                " send probabilities, or scores with --metrics 'auc { thresholds: 0 }'"
            )
    data: dict[str, np.ndarray] = {
        "predictions": (preds[:, 0] if len(pred_cols) == 1 else preds).astype(np.float32),
        "labels": labels.astype(np.float32),
    }
    for g in args.group_col:
        data[f"key:{g}"] = key_column(table.column(g).to_numpy(zero_copy_only=False), g, csv=csv)
    if args.weight_col:
        data["weights"] = _numeric(table, args.weight_col, csv, "weights").astype(np.float32)
    if args.sample_id_col:
        data["sample_ids"] = key_column(
            table.column(args.sample_id_col).to_numpy(zero_copy_only=False),
            args.sample_id_col,
            csv=csv,
        )

    parts: list[_Part] = []
    if args.arm_col:
        import pyarrow as pa
        import pyarrow.compute as pc

        arm_text = pc.cast(table.column(args.arm_col), pa.string()).to_numpy(zero_copy_only=False)
        kept = np.flatnonzero(keep)
        missing = [i for i in kept if arm_text[i] is None or arm_text[i] == ""]
        if missing:
            raise SendInputError(
                f"column {args.arm_col!r} (--arm-col), {_row_ref(int(missing[0]), csv)}: empty"
                f" ({len(missing)} such rows); with --arm-col every row needs an arm"
            )
        names, first = np.unique(arm_text[kept].astype(str), return_index=True)
        for name in names[np.argsort(first)]:
            parts.append(_Part(str(name), kept[arm_text[kept] == name]))
    else:
        parts.append(_Part(args.arm, np.flatnonzero(keep)))
        where_cols = {re.split(r"!=|==|=", w)[0].strip() for w in args.where}
        for col in table.column_names:
            if col.lower() in _ARM_LIKE and col not in where_cols and col != args.label_col:
                values = sorted({str(v) for v in table.column(col).unique().to_pylist()})
                if len(values) > 1:
                    shown = ", ".join(values[:5]) + (", ..." if len(values) > 5 else "")
                    say(
                        f"warning: column {col!r} has {len(values)} values ({shown}), but every"
                        f" row goes to --arm {args.arm}; use --arm-col {col} to send each arm"
                        f" to its own run, or --where {col}=VALUE"
                    )
    if not parts or all(len(p.rows) == 0 for p in parts):
        raise SendInputError(
            f"no rows to send ({table.num_rows} rows in {args.file}"
            + (f", none kept by --where {' '.join(args.where)}" if args.where else "")
            + ")"
        )

    digest = _file_digest(args.file)
    for part in parts:
        identity = json.dumps(
            [
                digest,
                args.experiment,
                part.arm,
                args.task,
                args.phase,
                args.step,
                declaration,
                pred_cols,
                args.label_col,
                args.group_col,
                args.weight_col,
                args.sample_id_col,
                args.arm_col,
                args.where,
                args.batch_size,
            ]
        )
        part.producer_id = args.producer_id or (
            "send/" + hashlib.sha256(identity.encode()).hexdigest()[:24]
        )
        if args.replace:
            part.producer_id += f"/replace-{time.time_ns()}"

    described = (
        f"--metrics {args.metrics}"
        if args.metrics
        else f"--kind {kind}{'' if args.kind else ' (the default)'}"
    )
    say(f"declared metrics ({args.task}/{args.phase}, from {described}): {declaration}")
    rows = sum(len(p.rows) for p in parts)
    filtered = f" of {table.num_rows}" if rows != table.num_rows else ""
    say(
        f"{rows:,}{filtered} rows of {args.file.name} -> experiment {args.experiment}: "
        + ", ".join(f"{p.arm} ({len(p.rows):,})" for p in parts)
        + f", step {args.step}"
    )
    if args.dry_run:
        say("dry run: nothing sent")
    return data, parts, declaration


def _say(message: str) -> None:
    print(f"rankboard send: {message}", file=sys.stderr, flush=True)


def _check_reachable(target: str, timeout: float) -> None:
    import grpc

    channel = grpc.insecure_channel(target)
    try:
        grpc.channel_ready_future(channel).result(timeout=timeout)
    except grpc.FutureTimeoutError:
        raise SendInputError(
            f"cannot reach the service at {target} (no answer in {timeout:g} s;"
            " is `rankboard serve` running there? --timeout to wait longer)"
        ) from None
    finally:
        channel.close()


_MAX_UNACKED_SAMPLES = 2_000_000  # in flight per arm: the memory bound of a send


def _stream(
    args: argparse.Namespace, data: dict[str, np.ndarray], parts: list[_Part], declaration: str
) -> int:
    import logging

    try:  # before grpc's channels open: an unreachable service answers in seconds
        _check_reachable(args.target, args.timeout)
    except SendInputError as err:
        _say(str(err))
        return 2
    from rankboard.protos.stream import (
        FlushTimeout,
        MetricsStreamError,
        RejectedBatchesError,
        Sender,
    )

    # the sender logs rejections and fatal errors; this command says them once itself
    logging.getLogger("rankboard.protos.stream").setLevel(logging.CRITICAL)
    from tqdm import tqdm

    total = sum(len(p.rows) for p in parts)
    configs = _declared_configs(declaration, args.phase)
    token = args.token if args.token is not None else os.environ.get("RANKBOARD_TOKEN") or None
    bar = tqdm(
        total=total,
        unit="samples",
        desc=f"send {args.file.name}",
        disable=args.no_progress,
        unit_scale=True,
    )
    failure: str | None = None
    try:
        for part in parts:
            part.stream = Sender(
                args.target,
                part.producer_id,
                token=token,
                first_sequence=1,
                ack_timeout=max(args.timeout, 5.0),
            )
            part.stream.start()
        done_before = 0
        for part in parts:
            failure = _send_part(args, data, part, configs, bar, done_before)
            done_before += len(part.rows)
            if failure:
                break
        for part in parts:
            if failure:
                break
            try:
                part.stream.flush(timeout=args.timeout)
            except RejectedBatchesError as err:
                failure = _rejection_text(err)
            except FlushTimeout:
                failure = (
                    f"the service at {args.target} stopped acknowledging"
                    f" (no progress for {args.timeout:g} s)"
                )
            except MetricsStreamError as err:
                failure = str(err)
            part.stats = part.stream.stats()
    finally:
        bar.close()
        for part in parts:
            if part.stream is not None:
                part.stream.close()
    if failure:
        _say(failure)
        return 1
    run = f"{args.experiment}/{{}}/{args.task}/{args.phase} step {args.step}"
    for part in parts:
        s = part.stats
        where = run.format(part.arm)
        if s["sent_batches"] and s["duplicate_batches"] == s["sent_batches"]:
            _say(
                f"{where}: already sent: the service had every batch of this file for this run,"
                " nothing changed (--replace sends it again on purpose)"
            )
        elif s["duplicate_batches"]:
            _say(
                f"{where}: {s['applied_samples']:,} samples applied; {s['duplicate_batches']}"
                " batches were there already (an earlier send of this file), not counted twice"
            )
        else:
            _say(f"{where}: {s['applied_samples']:,} samples applied")
    return 0


def _rejection_text(err: Any) -> str:
    rejections = err.rejections
    messages: dict[str, int] = {}
    for r in rejections:
        key = f"{r.code_name}: {r.message}"
        messages[key] = messages.get(key, 0) + r.samples
    lines = [
        f"rejected by the service ({len(rejections)} batch"
        f"{'es' if len(rejections) != 1 else ''}; a rejected batch changes nothing):"
    ]
    lines += [f"  {m} ({n:,} samples)" for m, n in messages.items()]
    return "\n".join(lines)


def _send_part(
    args: argparse.Namespace,
    data: dict[str, np.ndarray],
    part: _Part,
    configs: list[Any],
    bar: Any,
    before: int,
) -> str | None:
    """Send one arm's rows batch by batch; the bar follows acknowledged samples."""
    from rankboard.protos import wire
    from rankboard.protos.stream import FlushTimeout, MetricsStreamError, RejectedBatchesError

    sender = part.stream
    rows = part.rows
    keys = [k for k in data if k.startswith("key:")]
    preds = data["predictions"]
    classes = preds.shape[1] if preds.ndim == 2 and preds.shape[1] > 1 else 0
    last_progress, last_done, sent = time.monotonic(), -1, 0

    def refresh() -> str | None:
        nonlocal last_progress, last_done
        s = sender.stats()
        done = sent - s["unacked_samples"]
        if done != last_done:
            last_done, last_progress = done, time.monotonic()
            bar.n = before + done
            bar.refresh()
        try:  # a fatal error (authentication) or a refused batch ends the send at once
            sender.flush(timeout=args.timeout if s["rejected_batches"] else 0)
        except FlushTimeout:
            pass
        except RejectedBatchesError as err:
            return _rejection_text(err)
        except MetricsStreamError as err:
            return str(err)
        if s["unacked_samples"] and time.monotonic() - last_progress > args.timeout:
            return (
                f"the service at {args.target} stopped acknowledging (no progress for"
                f" {args.timeout:g} s; last error: {s['last_error']})"
            )
        return None

    for start in range(0, len(rows), args.batch_size):
        while sender.stats()["unacked_samples"] >= _MAX_UNACKED_SAMPLES:
            if (problem := refresh()) is not None:
                return problem
            time.sleep(0.05)
        idx = rows[start : start + args.batch_size]
        batch = wire.encode_batch(
            producer_id=part.producer_id,
            experiment=args.experiment,
            arm=part.arm,
            task=args.task,
            phase=args.phase,
            step=args.step,
            predictions=preds[idx],
            labels=data["labels"][idx],
            num_classes=classes,
            weights=data["weights"][idx] if "weights" in data else None,
            grouping_keys={k[4:]: data[k][idx] for k in keys},
            sample_ids=data["sample_ids"][idx] if "sample_ids" in data else None,
            metrics=configs,
        )
        sender.send([(batch, len(idx))])
        sent += len(idx)
        part.batches += 1
        if (problem := refresh()) is not None:
            return problem
    while sender.stats()["unacked_samples"]:
        if (problem := refresh()) is not None:
            return problem
        time.sleep(0.05)
    return refresh()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(os.EX_USAGE)
