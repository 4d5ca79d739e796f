"""Print the service's A/B comparison of the demo experiment (the compose ``report`` step).

::

    python -m rankboard.trainer.demo.report --url http://127.0.0.1:8000
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from rankboard.trainer.demo.run import (
    ARMS,
    TASKS,
    add_env_flag,
    demo_parser,
    fetch_comparison,
    format_comparison,
)

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Fetch ``/compare`` for each task over REST and print the table."""
    p = demo_parser(".report", "print the service's comparison of the demo's arms")
    add_env_flag(
        p, "--url", "RANKBOARD_URL", "http://127.0.0.1:8000", "the service's REST base URL"
    )
    p.add_argument("--experiment", default="demo")
    p.add_argument("--arms", nargs="+", default=list(ARMS), help="baseline first")
    p.add_argument("--phase", default="eval", choices=["eval", "train"])
    args = p.parse_args(argv)
    comparisons = fetch_comparison(args.url, args.experiment, args.arms[0], TASKS, args.phase)
    print(f"Experiment {args.experiment!r} ({args.phase}), baseline {args.arms[0]!r}:")
    print(format_comparison(comparisons, args.arms))
    return 0


if __name__ == "__main__":
    sys.exit(main())
