"""The doctests that need a data dir leave nothing in the temp folder (issue 16, item 10)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

MODULES = [
    "service/state/wal.py",
    "service/state/checkpoint.py",
    "service/state/store.py",
    "service/state/repair.py",
    "service/server.py",
    "service/datadir_lock.py",
]


def test_doctests_with_data_dirs_clean_up(tmp_path: Path) -> None:
    root = Path(__file__).resolve().parents[2]
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--doctest-modules",
         *[m for m in MODULES if (root / m).exists()]],
        cwd=root, capture_output=True, text=True, timeout=300,
        env={**os.environ, "TMPDIR": str(tmp)},
    )  # fmt: skip
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    assert sorted(p.name for p in tmp.iterdir()) == []
