"""How fast ``rankboard`` answers what needs no service: ``--help`` and an argument error.

Each command runs as its own process (as a user types it), ``--repeat`` times; the
table shows the median and worst wall time next to two references of the same run: a
bare ``python -c pass`` (the floor no CLI can beat) and importing torch and grpc (what
every call paid when they were imported before the arguments were parsed). Target: < 0.5 s.

    .venv/bin/python benchmarks/bench_cli.py [--repeat 7]

It also runs ``send --dry-run`` of a 200,000-row A/B export with string user ids (read,
checked, hashed, nothing sent), which does import numpy and pyarrow.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RANKBOARD = [sys.executable, "-m", "rankboard.service.cli"]


def timed(cmd: list[str], repeat: int, expect: int) -> list[float]:
    out = []
    for _ in range(repeat):
        start = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        out.append(time.perf_counter() - start)
        if proc.returncode != expect:
            raise SystemExit(f"{cmd}: exit {proc.returncode}, wanted {expect}: {proc.stderr}")
    return out


def write_export(path: Path, n: int) -> None:
    import numpy as np

    rng = np.random.default_rng(0)
    arm = rng.choice(["control", "treatment"], n)
    y = (rng.random(n) < 0.3).astype(int)
    p = np.round(np.clip(0.3 * y + 0.7 * rng.random(n), 0, 1), 4)
    users = rng.integers(0, 20_000, n)
    with open(path, "w") as f:
        f.write("user_id,arm,prediction,label,ts\n")
        for i in range(n):
            f.write(f"u{users[i]},{arm[i]},{p[i]},{y[i]},{1_700_000_000 + i}\n")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--json", action="store_true", help="one JSON object instead of a table")
    args = ap.parse_args()
    rows = []
    floor = timed([sys.executable, "-c", "pass"], args.repeat, 0)
    rows.append(("python -c pass (floor)", floor, None))
    before = timed([sys.executable, "-c", "import torch, grpc"], 3, 0)
    rows.append(("python -c 'import torch, grpc' (what --help paid before)", before, None))
    cases = [
        ("rankboard --help", [*RANKBOARD, "--help"], 0),
        ("rankboard send --help", [*RANKBOARD, "send", "--help"], 0),
        ("rankboard send --bogus (argument error)",
         [*RANKBOARD, "send", "f.csv", "--experiment", "e", "--arm", "a", "--task", "t",
          "--bogus"], 2),
        ("rankboard compare (missing flag)", [*RANKBOARD, "compare", "--experiment", "e"], 2),
    ]  # fmt: skip
    for name, cmd, expect in cases:
        rows.append((name, timed(cmd, args.repeat, expect), 0.5))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "ab.csv"
        write_export(path, args.rows)
        cmd = [*RANKBOARD, "send", str(path), "--experiment", "e", "--arm-col", "arm",
               "--task", "ctr", "--group-col", "user_id", "--dry-run"]  # fmt: skip
        rows.append((f"send --dry-run, {args.rows:,} rows, string ids", timed(cmd, 3, 0), None))
    if args.json:
        print(
            json.dumps(
                {name: {"median_s": statistics.median(t), "max_s": max(t)} for name, t, _ in rows}
            )
        )
        return 0
    print(f"| What | median | worst of {args.repeat} | target |")
    print("|---|---|---|---|")
    ok = True
    for name, t, target in rows:
        mark = ""
        if target is not None:
            good = statistics.median(t) < target
            ok &= good
            mark = f"< {target} s {'✔' if good else '✘'}"
        print(f"| {name} | {statistics.median(t):.3f} s | {max(t):.3f} s | {mark} |")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
