"""``python -m rankboard.trainer.demo`` end to end, tiny: the comparison has real numbers."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path


def test_demo_prints_the_services_comparison_and_stops_it(tmp_path: Path) -> None:
    data_dir = tmp_path / "state"
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "rankboard.trainer.demo",
            "--tiny",
            "--no-progress",
            "--device",
            "cpu",
            "--data-dir",
            str(data_dir),
        ],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=tmp_path,
    )
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    out = run.stdout
    assert "baseline 'control'" in out
    blocks = dict(
        re.findall(
            r"^experiment demo, task (\S+) \(eval\)(.*?)(?=^experiment |\Z)", out, re.M | re.S
        )
    )
    for task, metric in [
        ("ctr", "auc"),
        ("ctr", "grouped_auc"),
        ("ctr", "normalized_entropy"),
        ("watch_time", "xauc"),
    ]:
        block = blocks[task]
        assert "paired on 1200 sample ids" in block, block  # both arms scored one eval set
        num = r"([+-]?[0-9.]+)"
        iv = rf"\[{num}, {num}\]"
        base = re.search(rf"^{metric}\s+control\s+{num}\s+{iv}", block, re.M)
        row = re.search(
            rf"^{metric}\s+treatment\s+{num}\s+{iv}\s+{num}\s+{iv}\s+(\S+)\s+(\w+)$",
            block,
            re.M,
        )
        assert base and row, block
        control, lo, hi = map(float, base.groups())
        treatment, _, _, delta, d_lo, d_hi = map(float, row.groups()[:6])
        assert lo <= control <= hi
        assert abs((treatment - control) - delta) < 2e-6
        assert d_lo <= delta <= d_hi
        verdict = row.group(8)
        assert verdict in ("better", "worse", "inconclusive")
        assert (verdict == "inconclusive") == (d_lo <= 0 <= d_hi)
    assert "/v1/experiments/demo/compare?task=ctr&phase=eval&baseline=control" in out
    # the service's state stays, and its process is gone (SIGTERM, drained)
    assert (data_dir).is_dir() and any(data_dir.iterdir())
    assert (tmp_path / "service.log").exists()
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    assert str(data_dir) not in ps
