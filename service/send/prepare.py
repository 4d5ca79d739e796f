"""From the flags and the file to what is sent: the columns, one part per arm, and the
declaration, each part under a producer id derived from the file and the target run.

Deriving the producer id from the content (the file's SHA-256) and from everything that
shapes the batches makes a repeated send a no-op and an interrupted one resumable; see
:mod:`rankboard.service.send`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from rankboard.service.send.declare import declared_configs, kind_declaration
from rankboard.service.send.errors import SendInputError, row_ref, say
from rankboard.service.send.keys import key_column
from rankboard.service.send.table import (
    check_labels,
    file_digest,
    numeric_column,
    parse_where,
    read_table,
)

__all__ = ["Part", "prepare"]

_ARM_LIKE = {"arm", "arms", "variant", "arm_name", "variant_name", "bucket", "treatment_arm"}


@dataclass
class Part:
    """The rows of one arm."""

    arm: str
    rows: np.ndarray  # row numbers in the file
    producer_id: str = ""
    stream: Any = None
    stats: Any = None
    batches: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


def prepare(args: argparse.Namespace) -> tuple[dict[str, np.ndarray], list[Part], str]:
    """``(columns, parts, declaration)`` of a send; every refusal a ``SendInputError``.

    The columns are ``predictions``, ``labels``, ``key:<name>`` per ``--group-col``, and
    ``weights`` / ``sample_ids`` when given; a part's ``rows`` index them.
    """
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
    declaration = _declaration(args, kind)

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
    keep = parse_where(args.where, table, csv)
    data = _columns(args, table, kind, pred_cols, csv)
    parts = _parts(args, table, keep, csv)
    digest = file_digest(args.file)
    for part in parts:
        part.producer_id = _producer_id(args, part.arm, digest, declaration, pred_cols)

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


def _declaration(args: argparse.Namespace, kind: str | None) -> str:
    """The declaration text: ``--metrics`` (every grouping key a ``--group-col``), or the
    ``--kind``'s."""
    if not args.metrics:
        return kind_declaration(kind or "binary", args.phase, args.group_col)
    for cfg in declared_configs(args.metrics, args.phase):
        which = cfg.WhichOneof("metric")
        key = getattr(getattr(cfg, which), "grouping_key", None) if which else None
        if key and key not in args.group_col:
            raise SendInputError(
                f"--metrics: {which} groups by {key!r}, which is not a --group-col"
                f" (add --group-col {key})"
            )
    return str(args.metrics)


def _columns(
    args: argparse.Namespace, table: Any, kind: str | None, pred_cols: list[str], csv: bool
) -> dict[str, np.ndarray]:
    """The columns sent, checked: numbers, labels that fit the kind, keys as int64."""
    preds = np.stack([numeric_column(table, c, csv, "predictions") for c in pred_cols], axis=1)
    labels = numeric_column(table, args.label_col, csv, "labels")
    if kind is not None:
        check_labels(labels, args.label_col, kind, len(pred_cols), csv)
    if kind == "binary" and not args.metrics:
        outside = (preds < 0) | (preds > 1)
        if outside.any():
            row = int(np.argmax(outside.any(axis=1)))
            raise SendInputError(
                f"column {pred_cols[0]!r} (predictions), {row_ref(row, csv)}:"
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
        data["weights"] = numeric_column(table, args.weight_col, csv, "weights").astype(np.float32)
    if args.sample_id_col:
        data["sample_ids"] = key_column(
            table.column(args.sample_id_col).to_numpy(zero_copy_only=False),
            args.sample_id_col,
            csv=csv,
        )
    return data


def _parts(args: argparse.Namespace, table: Any, keep: np.ndarray, csv: bool) -> list[Part]:
    """One part per arm: ``--arm-col``'s values in order of appearance, or ``--arm``."""
    parts: list[Part] = []
    if args.arm_col:
        import pyarrow as pa
        import pyarrow.compute as pc

        arm_text = pc.cast(table.column(args.arm_col), pa.string()).to_numpy(zero_copy_only=False)
        kept = np.flatnonzero(keep)
        missing = [i for i in kept if arm_text[i] is None or arm_text[i] == ""]
        if missing:
            raise SendInputError(
                f"column {args.arm_col!r} (--arm-col), {row_ref(int(missing[0]), csv)}: empty"
                f" ({len(missing)} such rows); with --arm-col every row needs an arm"
            )
        names, first = np.unique(arm_text[kept].astype(str), return_index=True)
        for name in names[np.argsort(first)]:
            parts.append(Part(str(name), kept[arm_text[kept] == name]))
    else:
        parts.append(Part(args.arm, np.flatnonzero(keep)))
        _warn_arm_like(args, table)
    if not parts or all(len(p.rows) == 0 for p in parts):
        raise SendInputError(
            f"no rows to send ({table.num_rows} rows in {args.file}"
            + (f", none kept by --where {' '.join(args.where)}" if args.where else "")
            + ")"
        )
    return parts


def _warn_arm_like(args: argparse.Namespace, table: Any) -> None:
    """Warn when a file sent whole to one ``--arm`` has an arm-like column of many values."""
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


def _producer_id(
    args: argparse.Namespace, arm: str, digest: str, declaration: str, pred_cols: list[str]
) -> str:
    """``--producer-id``, else ``send/`` and a hash of the content and the target run
    (``--replace``: a new one each time)."""
    identity = json.dumps(
        [
            digest,
            args.experiment,
            arm,
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
    producer_id = args.producer_id or ("send/" + hashlib.sha256(identity.encode()).hexdigest()[:24])
    if args.replace:
        producer_id += f"/replace-{time.time_ns()}"
    return str(producer_id)
