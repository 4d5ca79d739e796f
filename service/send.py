"""``rankboard send``: stream a CSV or Parquet file of logged predictions.

It uses the trainers' client (:class:`rankboard.trainer.client.MetricsStream`),
with a progress bar, and exits non-zero with the service's message when a batch
is rejected. This is how offline prediction dumps are evaluated.

``--metrics`` takes the metrics as tzrec text, either as a run of metric
fields (``'auc {} grouped_auc { grouping_key: "user_id" }'``) or as repeated
``metrics { ... }`` blocks; see :func:`metric_blocks`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

_SCALAR_FIELDS = {"decay_rate", "decay_step", "step_decay_rate"}


def _top_level_fields(text: str) -> list[tuple[str, str]]:
    """Split protobuf text into its top-level ``(name, text)`` fields.

    >>> _top_level_fields('auc {} grouped_auc { grouping_key: "u{" } decay_step: 5')
    [('auc', 'auc {}'), ('grouped_auc', 'grouped_auc { grouping_key: "u{" }'), \
('decay_step', 'decay_step: 5')]
    """
    fields: list[tuple[str, str]] = []
    i, n = 0, len(text)

    def skip_space(j: int) -> int:
        while j < n and (text[j].isspace() or text[j] in ",;"):
            j += 1
        return j

    while (i := skip_space(i)) < n:
        start = i
        while i < n and (text[i].isalnum() or text[i] == "_"):
            i += 1
        name = text[start:i]
        if not name:
            raise ValueError(f"--metrics: expected a field name at character {start + 1}")
        i = skip_space(i)
        if i < n and text[i] == ":":
            i = skip_space(i + 1)
        if i < n and text[i] in "{<":
            depth, quote = 0, ""
            while i < n:
                c = text[i]
                if quote:
                    if c == "\\":
                        i += 1
                    elif c == quote:
                        quote = ""
                elif c in "\"'":
                    quote = c
                elif c in "{<":
                    depth += 1
                elif c in "}>":
                    depth -= 1
                    if depth == 0:
                        i += 1
                        break
                i += 1
        elif i < n and text[i] in "\"'":
            end = text.find(text[i], i + 1)
            i = n if end < 0 else end + 1
        else:
            while i < n and not text[i].isspace():
                i += 1
        fields.append((name, text[start:i].strip()))
    return fields


def metric_blocks(text: str, phase: str) -> str:
    """Normalise ``--metrics`` text into repeated ``metrics { }`` / ``train_metrics { }``.

    >>> metric_blocks('auc {} grouped_auc { grouping_key: "user_id" }', "eval")
    'metrics { auc {} } metrics { grouped_auc { grouping_key: "user_id" } }'
    >>> metric_blocks('auc { thresholds: 100 } decay_step: 10', "train")
    'train_metrics { auc { thresholds: 100 } decay_step: 10 }'
    """
    wrapper = "train_metrics" if phase == "train" else "metrics"
    fields = _top_level_fields(text)
    if fields and all(name in ("metrics", "train_metrics") for name, _ in fields):
        return text
    groups: list[list[str]] = []
    for name, body in fields:
        if name in _SCALAR_FIELDS and groups:
            groups[-1].append(body)
        else:
            groups.append([body])
    return " ".join(f"{wrapper} {{ {' '.join(g)} }}" for g in groups)


def read_table(path: Path, columns: list[str]) -> dict[str, np.ndarray]:
    """Read ``columns`` of a CSV or Parquet file as numpy arrays."""
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    if not path.exists():
        raise SystemExit(f"rankboard send: {path} does not exist")
    suffix = path.suffix.lower()
    if suffix in (".parquet", ".pq"):
        table = pq.read_table(path)
    elif suffix in (".csv", ".tsv", ".txt"):
        opts = pacsv.ParseOptions(delimiter="\t" if suffix == ".tsv" else ",")
        table = pacsv.read_csv(path, parse_options=opts)
    else:
        raise SystemExit(f"rankboard send: {path}: use a .csv, .tsv or .parquet file")
    missing = [c for c in columns if c not in table.column_names]
    if missing:
        raise SystemExit(
            f"rankboard send: {path} has no column(s) {', '.join(missing)}"
            f" (columns: {', '.join(table.column_names)})"
        )
    return {c: table.column(c).to_numpy() for c in columns}


def add_send_parser(sub: argparse._SubParsersAction) -> None:
    """Register the ``send`` subcommand."""
    p = sub.add_parser("send", help="stream a CSV/Parquet file of predictions to the service")
    p.add_argument("file", type=Path, help="a .csv, .tsv or .parquet file")
    p.add_argument("--target", default="127.0.0.1:50051", help="the service's gRPC host:port")
    p.add_argument("--experiment", required=True)
    p.add_argument("--arm", required=True)
    p.add_argument("--task", required=True)
    p.add_argument("--phase", required=True, choices=["train", "eval"])
    p.add_argument("--step", type=int, default=0, help="eval step / training step (default 0)")
    p.add_argument(
        "--metrics",
        default=None,
        help="metric declaration, e.g. 'auc {} grouped_auc { grouping_key: \"user_id\" }'",
    )
    p.add_argument("--pred-col", default="prediction")
    p.add_argument("--label-col", default="label")
    p.add_argument(
        "--group-col",
        action="append",
        default=[],
        help="int64 grouping key column (repeatable); its name is the grouping_key",
    )
    p.add_argument("--weight-col", default=None)
    p.add_argument("--batch-size", type=int, default=65_536)
    p.add_argument("--token", default=None, help="write token (or RANKBOARD_TOKEN)")
    p.add_argument(
        "--producer-id",
        default=None,
        help="producer id (default: send/<file name>/<experiment>/<arm>/<task>)",
    )
    p.set_defaults(func=send)


def send(args: argparse.Namespace) -> int:
    """Stream the file; 0 when every batch was applied, 1 with the service's message if not."""
    from tqdm import tqdm

    from rankboard.trainer.client import MetricsStream, MetricsStreamError

    columns = [args.pred_col, args.label_col, *args.group_col]
    if args.weight_col:
        columns.append(args.weight_col)
    data = read_table(args.file, columns)
    n = len(data[args.label_col])
    metrics = None
    if args.metrics:
        metrics = {(args.task, args.phase): metric_blocks(args.metrics, args.phase)}
    producer = args.producer_id or (
        f"send/{args.file.name}/{args.experiment}/{args.arm}/{args.task}/{args.phase}"
    )
    try:
        stream = MetricsStream(
            args.target,
            experiment=args.experiment,
            arm=args.arm,
            producer_id=producer,
            metrics=metrics,
            token=args.token,
            max_batch_samples=args.batch_size,
        )
    except ValueError as err:
        print(f"rankboard send: {err}", file=sys.stderr)
        return 2
    try:
        with tqdm(total=n, unit="samples", desc=f"send {args.file.name}") as bar:
            for start in range(0, n, args.batch_size):
                sl = slice(start, start + args.batch_size)
                stream.log(
                    data[args.pred_col][sl].astype(np.float32),
                    data[args.label_col][sl].astype(np.float32),
                    task=args.task,
                    phase=args.phase,
                    step=args.step,
                    grouping_keys={c: data[c][sl].astype(np.int64) for c in args.group_col} or None,
                    weights=data[args.weight_col][sl].astype(np.float32)
                    if args.weight_col
                    else None,
                )
                bar.update(min(args.batch_size, n - start))
            stream.flush()
        stream.close()
    except (MetricsStreamError, ValueError) as err:
        print(f"rankboard send: rejected by the service: {err}", file=sys.stderr)
        stream.close(timeout=5)
        return 1
    print(
        f"rankboard send: {n} samples applied to {args.experiment}/{args.arm}/{args.task}"
        f"/{args.phase}",
        file=sys.stderr,
    )
    return 0
