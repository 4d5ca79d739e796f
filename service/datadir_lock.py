"""Checks ``rankboard serve`` makes before it replays anything: lock, ports, device.

* **Data dir lock.** ``<data dir>/LOCK`` is held with an exclusive ``fcntl.flock``
  for the life of the process and holds its pid. A second ``serve`` on the same
  dir fails at once, naming that pid (two services writing one write-ahead log
  would each see half the data and could corrupt it). The kernel drops the lock
  when the process dies, even on ``kill -9``: a stale file never blocks a start.
* **Ports** are tried (bound and released) before the write-ahead log is
  replayed, so a busy port is reported in a second, not after minutes of replay.
* **Device**: ``--device cuda`` on a machine without a visible GPU is refused
  with a sentence, not a traceback.

Example::

    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as d:
    ...     with DataDirLock(d) as lock:
    ...         try:
    ...             DataDirLock(d).acquire()
    ...         except StartupError as err:
    ...             print(str(err).split(" (")[0].replace(d, "D"))
    data dir D is in use by another rankboard serve
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import socket
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType
from typing import NoReturn

__all__ = ["LOCK_NAME", "DataDirLock", "StartupError", "check_device", "check_ports", "preflight"]

LOCK_NAME = "LOCK"


class StartupError(RuntimeError):
    """The service cannot start; the message says why and what to do."""


class DataDirLock:
    """An exclusive, process-lifetime lock on a data dir (see the module docs)."""

    def __init__(self, data_dir: str | Path) -> None:
        self.data_dir = Path(data_dir)
        self.path = self.data_dir / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> DataDirLock:
        """Take the lock, or raise :class:`StartupError` (the holder's pid, or what is wrong)."""
        try:
            self.data_dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as err:
            not_writable = (
                f"data dir {self.data_dir} is not writable ({err.strerror}); "
                "choose a --data-dir this user can write"
            )
            _refuse(
                err,
                {
                    errno.EACCES: not_writable,
                    errno.EPERM: not_writable,
                    errno.EROFS: f"data dir {self.data_dir} is on a read-only file system; "
                    "choose a writable --data-dir",
                },
                f"cannot use data dir {self.data_dir}: {err}",
            )
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = _read_pid(fd)
            os.close(fd)
            who = f"pid {holder}" if holder else "a process whose pid is not recorded"
            raise StartupError(
                f"data dir {self.data_dir} is in use by another rankboard serve ({who}); "
                "stop it first, or give this one another --data-dir"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        """Drop the lock (the file stays; it is harmless without a holder)."""
        if self._fd is not None:
            fd, self._fd = self._fd, None
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
            os.close(fd)

    def __enter__(self) -> DataDirLock:
        if self._fd is None:
            self.acquire()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode().strip()
        return int(text) if text else None
    except (OSError, ValueError):
        return None


def check_ports(host: str, ports: Iterable[int]) -> None:
    """Raise :class:`StartupError` naming the first port of ``ports`` that cannot be bound.

    Port 0 (any free port) is not checked.

    >>> with socket.socket() as s:
    ...     s.bind(("127.0.0.1", 0)); s.listen()
    ...     try:
    ...         check_ports("127.0.0.1", [s.getsockname()[1]])
    ...     except StartupError as err:
    ...         print("is already in use" in str(err))
    True
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    seen: set[int] = set()
    for port in ports:
        if not port:
            continue
        if port in seen:
            raise StartupError(f"port {port} is given twice (gRPC and REST need one each)")
        seen.add(port)
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            # no SO_REUSEPORT: grpc sets it on its sockets, and a probe without it
            # fails on a port another server (gRPC or not) listens on
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((host, port))
            except OSError as err:
                _refuse(
                    err,
                    {
                        errno.EADDRINUSE: f"port {port} on {host} is already in use (another"
                        f" rankboard serve? `ss -ltnp 'sport = :{port}'` shows who); choose"
                        " another port, or 0 for any free one",
                        errno.EACCES: f"port {port} on {host}: permission denied (ports below"
                        " 1024 need privileges); choose a port >= 1024",
                    },
                    f"cannot bind {host}:{port}: {err.strerror}",
                )


def _refuse(err: OSError, by_errno: dict[int, str], otherwise: str) -> NoReturn:
    """Raise the :class:`StartupError` that says what ``err`` means: the sentence for its
    errno, else ``otherwise``."""
    raise StartupError(by_errno.get(err.errno or 0, otherwise)) from None


def check_device(device: str) -> None:
    """``--device cuda`` needs a visible CUDA GPU (``auto`` and ``cpu`` always pass)."""
    if device != "cuda":
        return
    import torch

    if not torch.cuda.is_available():
        built = "without CUDA" if torch.version.cuda is None else f"with CUDA {torch.version.cuda}"
        raise StartupError(
            f"--device cuda, but no CUDA GPU is visible (torch {torch.__version__} built {built}"
            f"; CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')});"
            " use --device cpu, or auto to take the GPU only when there is one"
        )


def preflight(data_dir: str | Path, host: str, ports: Iterable[int], device: str) -> DataDirLock:
    """Lock ``data_dir``, check the ports and the device; return the held lock.

    The lock is released if a later check fails.
    """
    lock = DataDirLock(data_dir).acquire()
    try:
        check_ports(host, ports)
        check_device(device)
    except BaseException:
        lock.release()
        raise
    return lock
