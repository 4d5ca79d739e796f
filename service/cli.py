"""The ``rankboard`` command: ``serve`` the service, ``send`` a file, ``compare`` arms.

Example::

    rankboard serve --grpc-port 50051 --http-port 8000 --data-dir ./rankboard-data
    rankboard send preds.csv --target 127.0.0.1:50051 --experiment exp1 \\
        --arm-col arm --task ctr --phase eval --step 1000 --group-col user_id
    rankboard compare --url http://127.0.0.1:8000 --experiment exp1 --task ctr \\
        --baseline control

Arguments are parsed before anything heavy (torch, grpc, numpy) is imported, so
``--help`` and a mistyped flag answer at once; a subcommand's error shows that
subcommand's usage.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

__all__ = ["build_parser", "main"]


class _SubcommandParser(argparse.ArgumentParser):
    """A subcommand parser that reports its own unknown arguments with its own usage.

    (argparse hands a subcommand's unknown flags up to the top-level parser, whose
    usage line says nothing about the subcommand's flags.)
    """

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        ns, extras = super().parse_known_args(args, namespace)
        if extras:
            self.error(f"unrecognized arguments: {' '.join(extras)}")
        return ns, extras


def build_parser(full: bool = False) -> argparse.ArgumentParser:
    """The ``rankboard`` argument parser.

    Light by default: ``repair`` (whose module loads torch) is listed by a
    placeholder; ``full=True`` (what :func:`main` uses when the command is
    ``repair``) registers its real parser.

    >>> build_parser().parse_args(["compare", "--experiment", "e", "--task", "t",
    ...                            "--baseline", "a"]).alpha
    0.05
    """
    from rankboard.service.compare import add_compare_parser
    from rankboard.service.send import add_send_parser
    from rankboard.service.serve import add_serve_parser

    parser = argparse.ArgumentParser(
        prog="rankboard",
        description="rankboard: serve the metrics service, send a file of predictions,"
        " compare the arms of an experiment.",
    )
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_SubcommandParser)
    add_serve_parser(sub)
    add_send_parser(sub)
    if full:
        from rankboard.service.state.repair import add_repair_parser  # RELIABILITY

        add_repair_parser(sub)
    else:
        sub.add_parser("repair", help="check or repair a data dir (rankboard repair --help)")
    add_compare_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``rankboard`` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser(full=bool(argv) and argv[0] == "repair").parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
