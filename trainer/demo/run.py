"""``make demo``: start the service, train both arms, print the service's A/B comparison.

Steps: (1) ``rankboard serve`` as a subprocess on free loopback ports on the
demo's state folder (default ``.demo/state``, ``.demo/tiny-state`` with
``--tiny``; its log in ``service.log`` next to it);
(2) the ``control`` and ``treatment`` arms train one after the other in this
process (:func:`rankboard.trainer.demo.train.train_arm`), streaming to it;
(3) the comparison of the two arms is fetched over REST and printed as a
table, with the URLs to query; (4) the service is stopped with SIGTERM (it
drains and exits), so nothing keeps running. Its state stays in the folder:
``rankboard serve --data-dir .demo/state`` serves the same numbers again.

The demo never deletes a folder. It marks the folders it creates with a
``.rankboard-demo`` file (see :func:`prepare_data_dir`); run again on one of
them, it deletes only its own experiment (``demo``) through the service, so
other experiments sent there are kept. A non-empty folder without the marker
(a real service's data dir, say) is refused.

Example of the table (numbers from a real run)::

    >>> print(format_comparison({"ctr": {"experiment": "demo", "task": "ctr",
    ...     "phase": "eval", "baseline": "control", "step": 900, "arms": {
    ...     "control": {"step": 900, "samples": 80000, "metrics": {"auc": 0.6626}},
    ...     "treatment": {"step": 900, "samples": 80000, "metrics": {"auc": 0.6638},
    ...                   "delta": {"auc": 0.0012}}}}}))
    experiment demo, task ctr (eval), baseline control, step 900
      control: 80,000 samples
      treatment: 80,000 samples
    <BLANKLINE>
    metric  arm        estimate          Δ
    ------  ---------  --------  ---------
    auc     control    0.662600          -
    auc     treatment  0.663800  +0.001200
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import re
import signal
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

__all__ = [
    "MARKER",
    "ServiceProcess",
    "add_env_flag",
    "demo_parser",
    "fetch_comparison",
    "format_comparison",
    "main",
    "prepare_data_dir",
    "serve_subprocess",
]

logger = logging.getLogger(__name__)

MARKER = ".rankboard-demo"
READY = re.compile(r"rankboard: gRPC on (\S+), REST on (\S+)")
ARMS = ("control", "treatment")
TASKS = ("ctr", "watch_time")


@dataclass
class ServiceProcess:
    """A running ``rankboard serve`` subprocess and its addresses."""

    process: subprocess.Popen
    grpc_target: str
    http_url: str


def serve_command(*args: str) -> list[str]:
    """The ``rankboard serve`` command line run with this interpreter.

    >>> serve_command("--grpc-port", "0")[-3:]
    ['serve', '--grpc-port', '0']
    """
    launcher = "import sys; from rankboard.service.cli import main; sys.exit(main())"
    return [sys.executable, "-c", launcher, "serve", *args]


@contextlib.contextmanager
def serve_subprocess(
    data_dir: Path,
    *,
    log_path: Path | None = None,
    extra_args: Sequence[str] = (),
    host: str = "127.0.0.1",
    grpc_port: int = 0,
    http_port: int = 0,
    ready_timeout: float = 120.0,
    env: dict[str, str] | None = None,
) -> Iterator[ServiceProcess]:
    """Run ``rankboard serve`` until the block exits, then SIGTERM it and wait.

    Readiness is the line the CLI prints once both servers listen; its
    stderr (the service's log) goes to ``log_path`` (or is discarded).
    """
    cmd = serve_command(
        "--host",
        host,
        "--grpc-port",
        str(grpc_port),
        "--http-port",
        str(http_port),
        "--data-dir",
        str(data_dir),
        *extra_args,
    )
    log_file = open(log_path, "ab") if log_path else subprocess.DEVNULL  # noqa: SIM115
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=log_file, text=True, env=env, start_new_session=True
    )
    try:
        deadline = time.monotonic() + ready_timeout
        match = None
        assert proc.stdout is not None
        while match is None:
            line = proc.stdout.readline()
            if not line:
                raise RuntimeError(
                    f"rankboard serve exited with {proc.wait()} before it was ready"
                    + (f"; see {log_path}" if log_path else "")
                )
            match = READY.search(line)
            if time.monotonic() > deadline:
                raise TimeoutError(f"rankboard serve not ready after {ready_timeout} s")
        yield ServiceProcess(proc, match.group(1), match.group(2))
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
        if log_path:
            log_file.close()  # type: ignore[union-attr]


class ForeignDataDir(RuntimeError):
    """The demo was pointed at a folder it did not create."""


def prepare_data_dir(data_dir: Path) -> bool:
    """Make ``data_dir`` the demo's; True when it holds an earlier demo run.

    A missing or empty folder is created and marked with :data:`MARKER`; a
    marked one is reused as it is; anything else raises :class:`ForeignDataDir`
    and is left untouched. Nothing is ever deleted here.

    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     first = prepare_data_dir(Path(tmp) / "state")
    ...     again = prepare_data_dir(Path(tmp) / "state")
    ...     (Path(tmp) / "other").mkdir(); _ = (Path(tmp) / "other" / "wal").write_text("x")
    ...     try:
    ...         prepare_data_dir(Path(tmp) / "other")
    ...     except ForeignDataDir:
    ...         foreign = "refused"
    >>> first, again, foreign
    (False, True, 'refused')
    """
    marker = data_dir / MARKER
    if marker.is_file():
        return True
    if data_dir.exists() and (not data_dir.is_dir() or any(data_dir.iterdir())):
        raise ForeignDataDir(
            f"{data_dir} exists and was not created by the demo (no {MARKER} file in it);"
            " the demo never writes into or deletes such a folder: give another --data-dir"
        )
    data_dir.mkdir(parents=True, exist_ok=True)
    marker.write_text(
        "created by `python -m rankboard.trainer.demo`; the demo may reuse this folder\n"
    )
    return False


def delete_demo_experiment(http_url: str, experiment: str) -> int:
    """Delete ``experiment`` through the service (a re-run replaces its own numbers).

    Returns the number of runs deleted (0 when there was none).
    """
    with httpx.Client(base_url=http_url, timeout=60) as client:
        r = client.delete(f"/v1/experiments/{experiment}")
        if r.status_code == 404:
            return 0
        r.raise_for_status()
        return int(r.json().get("runs_deleted", 0))


def fetch_comparison(
    http_url: str,
    experiment: str,
    baseline: str,
    tasks: Sequence[str] = TASKS,
    phase: str = "eval",
) -> dict[str, Any]:
    """``GET /v1/experiments/{e}/compare`` for each task, recomputed (``fresh=true``)."""
    out = {}
    with httpx.Client(base_url=http_url, timeout=120) as client:
        for task in tasks:
            r = client.get(
                f"/v1/experiments/{experiment}/compare",
                params={"task": task, "phase": phase, "baseline": baseline, "fresh": "true"},
            )
            r.raise_for_status()
            out[task] = r.json()
    return out


def format_comparison(comparisons: dict[str, Any], arms: Sequence[str] = ()) -> str:
    """The service's comparison of each task as ``rankboard compare`` prints it: per metric
    and arm the estimate and its interval, the delta from the baseline with its interval,
    the p-value and the verdict (``arms`` is kept for callers; the bodies name them)."""
    from rankboard.service.compare import format_compare  # stdlib-only formatter

    del arms
    return "\n\n".join(format_compare(body) for body in comparisons.values())


def demo_parser(module: str, description: str) -> argparse.ArgumentParser:
    """The argument parser of ``python -m rankboard.trainer.demo<module>``.

    >>> demo_parser(".report", "print the comparison").prog
    'python -m rankboard.trainer.demo.report'
    """
    return argparse.ArgumentParser(
        prog=f"python -m rankboard.trainer.demo{module}", description=description
    )


def add_env_flag(p: argparse.ArgumentParser, flag: str, env: str, default: str, what: str) -> None:
    """A flag whose default is the environment variable ``env``, else ``default``.

    >>> p = argparse.ArgumentParser()
    >>> add_env_flag(p, "--url", "RANKBOARD_DOCTEST_URL", "http://h:1", "the REST base URL")
    >>> p.parse_args([]).url
    'http://h:1'
    """
    p.add_argument(
        flag, default=os.environ.get(env, default), help=f"{what} (default ${env} or {default})"
    )


def _quiet_libraries() -> None:
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning)
    for name in ("torch.fx._symbolic_trace", "torchrec", "torch.distributed"):
        logging.getLogger(name).setLevel(logging.ERROR)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m rankboard.trainer.demo``."""
    p = demo_parser("", "rankboard demo: two A/B arms measured by the service")
    p.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="service state folder (default .demo/state, .demo/tiny-state with --tiny); one"
        " the demo created, or a new or empty one; never deleted: a re-run replaces only"
        " the demo's own experiment",
    )
    p.add_argument("--tiny", action="store_true", help="a few-second run (tests)")
    p.add_argument("--steps", type=int, default=None, help="override the configs' num_steps")
    p.add_argument(
        "--device",
        default="auto",
        choices=["auto", "cpu", "cuda"],
        help="the service's device (default: the GPU if there is one)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = p.parse_args(argv)
    data_dir: Path = args.data_dir or Path(".demo/tiny-state" if args.tiny else ".demo/state")
    try:
        reused = prepare_data_dir(data_dir)
    except ForeignDataDir as err:
        print(f"rankboard demo: {err}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    _quiet_libraries()
    from rankboard.trainer.demo.train import CONFIG_DIR, EXPERIMENT, DemoSettings, train_arm

    settings = DemoSettings.tiny() if args.tiny else DemoSettings()
    if args.steps:
        settings.steps = args.steps
    log_path = data_dir.parent / "service.log"
    start = time.monotonic()
    print(f"rankboard demo: starting the service (state in {data_dir}, log in {log_path})")
    with serve_subprocess(data_dir, log_path=log_path, extra_args=["--device", args.device]) as svc:
        print(f"rankboard demo: service up: gRPC {svc.grpc_target}, REST {svc.http_url}")
        if reused and delete_demo_experiment(svc.http_url, EXPERIMENT):
            print(
                f"rankboard demo: replaced the previous run of experiment {EXPERIMENT!r} in"
                f" {data_dir} (other experiments there are kept)"
            )
        for arm in ARMS:
            train_arm(
                svc.grpc_target,
                arm,
                CONFIG_DIR / f"{arm}.config",
                settings=settings,
                run_id=f"demo-{os.getpid()}-{arm}",
                progress=not args.no_progress,
            )
        comparisons = fetch_comparison(svc.http_url, EXPERIMENT, ARMS[0])
        step = comparisons[TASKS[0]]["arms"][ARMS[0]]["step"]
        samples = comparisons[TASKS[0]]["arms"][ARMS[0]]["samples"]
        print()
        print(
            f"Experiment {EXPERIMENT!r}: eval at step {step} ({samples:,} held-out samples "
            f"per arm), baseline {ARMS[0]!r}, computed by the service:"
        )
        print(format_comparison(comparisons, ARMS))
        url = svc.http_url
    print()
    print(
        "Query it (after `rankboard serve --data-dir "
        f"{data_dir} --http-port {url.rsplit(':', 1)[1]}`; the demo's service has stopped):"
    )
    print(f"  {url}/v1/experiments/{EXPERIMENT}")
    print(f"  {url}/v1/experiments/{EXPERIMENT}/compare?task=ctr&phase=eval&baseline=control")
    print(f"  {url}/v1/experiments/{EXPERIMENT}/arms/treatment/metrics?task=watch_time&phase=eval")
    print(
        f"  {url}/v1/experiments/{EXPERIMENT}/arms/control/history?task=ctr&phase=train&metric=auc"
    )
    serve = "make serve" + ("" if data_dir == Path(".demo/state") else f" SERVE_DIR={data_dir}")
    print(f"Dashboard: `{serve}`, then open http://127.0.0.1:8000/?experiment={EXPERIMENT}")
    print(f"rankboard demo: done in {time.monotonic() - start:.0f} s")
    from torch import distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()
    return 0
