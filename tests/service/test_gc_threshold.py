"""The service's cyclic-GC thresholds: set while it runs, the process's own after."""

from __future__ import annotations

import gc
from pathlib import Path

from rankboard.service.server import GC_THRESHOLD, ServiceConfig, run_service


def test_gc_thresholds_hold_while_the_service_runs(tmp_path: Path) -> None:
    saved = gc.get_threshold()
    gc.set_threshold(700, 10, 10)  # Python's defaults
    try:
        with run_service(ServiceConfig(data_dir=tmp_path, device="cpu")):
            assert gc.get_threshold() == GC_THRESHOLD
        assert gc.get_threshold() == (700, 10, 10)
    finally:
        gc.set_threshold(*saved)


def test_gc_thresholds_left_alone_on_request(tmp_path: Path) -> None:
    before = gc.get_threshold()
    with run_service(ServiceConfig(data_dir=tmp_path, device="cpu", gc_threshold=None)):
        assert gc.get_threshold() == before
    assert gc.get_threshold() == before
