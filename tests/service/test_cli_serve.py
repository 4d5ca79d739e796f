"""`rankboard serve` refuses at once, with a sentence, what it cannot do.

Real ``serve`` processes: a second one on a locked data dir, a busy port, an
unwritable dir, ``--device cuda`` without a GPU; and ``--help`` / argument errors.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from rankboard.service.datadir_lock import DataDirLock
from tests.helpers import ServiceProcess, free_port


def serve(data_dir: Path | str, *extra: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "rankboard.service.cli", "serve", "--data-dir", str(data_dir),
         "--grpc-port", str(free_port()), "--http-port", str(free_port()), "--device", "cpu",
         *extra],
        capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


def test_second_serve_on_a_data_dir_exits_naming_the_holder(tmp_path: Path) -> None:
    first = ServiceProcess(tmp_path / "data")
    first.start()
    try:
        second = serve(tmp_path / "data")
        assert second.returncode == 2
        assert f"in use by another rankboard serve (pid {first.proc.pid})" in second.stderr
        assert "Traceback" not in second.stderr
    finally:
        assert first.stop() == 0
    # the lock goes with its holder: the dir can be taken again
    DataDirLock(tmp_path / "data").acquire().release()


def test_busy_port_is_reported_before_replay(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        out = subprocess.run(
            [sys.executable, "-m", "rankboard.service.cli", "serve", "--data-dir",
             str(tmp_path / "data"), "--grpc-port", str(port), "--http-port", "0",
             "--device", "cpu"],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
    assert out.returncode == 2
    assert f"port {port} on 127.0.0.1 is already in use" in out.stderr
    assert "Traceback" not in out.stderr
    # nothing was replayed or written: the data dir holds only the released lock file
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["LOCK"]


def test_unwritable_data_dir_is_a_sentence(tmp_path: Path) -> None:
    if os.geteuid() == 0:
        target = "/sys/rankboard-test-data"  # read-only even for root
    else:
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        target = str(ro / "data")
    out = serve(target)
    assert out.returncode == 2
    assert f"data dir {target}" in out.stderr
    assert "not writable" in out.stderr or "read-only" in out.stderr
    assert "Traceback" not in out.stderr


def test_device_cuda_without_a_gpu_is_a_sentence(tmp_path: Path) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    out = serve(tmp_path / "data", "--device", "cuda")
    assert out.returncode == 2
    assert "--device cuda, but no CUDA GPU is visible" in out.stderr
    assert "--device cpu" in out.stderr
    assert "Traceback" not in out.stderr


@pytest.mark.parametrize(
    ("args", "usage"),
    [(["send", "f.csv", "--experiment", "e", "--arm", "a", "--task", "t", "--bogus"],
      "usage: rankboard send"),
     (["serve", "--grpc-prt", "1"], "usage: rankboard serve"),
     (["compare", "--experiment", "e"], "usage: rankboard compare")],
)  # fmt: skip
def test_subcommand_errors_show_the_subcommand_usage(args: list[str], usage: str) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "rankboard.service.cli", *args],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 2
    assert out.stderr.startswith(usage), out.stderr


def test_help_imports_nothing_heavy() -> None:
    """--help and argument errors are answered before torch, grpc or numpy load."""
    code = (
        "import sys\n"
        "from rankboard.service.cli import main\n"
        "try:\n"
        "    main(['send', '--help'])\n"
        "except SystemExit:\n"
        "    pass\n"
        "heavy = [m for m in ('torch', 'grpc', 'numpy', 'pyarrow', 'httpx') if m in sys.modules]\n"
        "print('HEAVY', heavy, file=sys.stderr)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert "HEAVY []" in out.stderr, out.stderr


def test_one_port_for_both_servers_is_refused(tmp_path: Path) -> None:
    port = free_port()
    out = subprocess.run(
        [sys.executable, "-m", "rankboard.service.cli", "serve", "--data-dir",
         str(tmp_path / "data"), "--grpc-port", str(port), "--http-port", str(port)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 2
    assert f"port {port} is given twice" in out.stderr and "Traceback" not in out.stderr
