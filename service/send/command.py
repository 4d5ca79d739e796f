"""The ``send`` subcommand: its flags (:func:`add_send_parser`) and what it runs
(:func:`send`). Light: the file is read and the service reached only when it runs."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rankboard.service.send.declare import KINDS
from rankboard.service.send.errors import SendInputError

__all__ = ["add_send_parser", "send"]


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


def send(args: argparse.Namespace) -> int:
    """Run ``rankboard send``: 0 when every sample was applied (or was there already).

    1 when the service refused a batch or stopped answering, 2 when the file or
    flags do not fit or the service cannot be reached.
    """
    from rankboard.service.send.deliver import deliver
    from rankboard.service.send.prepare import prepare

    try:
        prepared = prepare(args)
    except SendInputError as err:
        print(f"rankboard send: {err}", file=sys.stderr)
        return 2
    if args.dry_run:
        return 0
    return deliver(args, *prepared)
