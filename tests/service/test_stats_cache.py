"""The statistics cache serves the last statistics while newer ones are computed."""

from __future__ import annotations

import threading
import time

from rankboard.service.state.batch import RunKey
from rankboard.service.state.query import StatsCache

KEY = (RunKey("e", "a", "ctr", "eval"), 1, None)


def test_stale_while_revalidate_and_fresh_waits():
    cache = StatsCache()
    calls: list[int] = []
    gate = threading.Event()

    def compute(version: int):
        def run():
            calls.append(version)
            gate.wait(10) if version == 2 else time.sleep(0.06)  # a costly computation
            return {"v": version}, 8

        return run

    assert cache.get(KEY, 1, compute(1), fresh=False) == ({"v": 1}, False)
    assert cache.get(KEY, 1, compute(1), fresh=False) == ({"v": 1}, False)  # a hit
    # state moved on: the old value comes back at once, marked stale, computed behind
    assert cache.get(KEY, 2, compute(2), fresh=False) == ({"v": 1}, True)
    assert cache.get(KEY, 2, compute(2), fresh=False) == ({"v": 1}, True)  # not twice
    gate.set()
    # a fresh reader waits for (or shares) the computation of the current version
    assert cache.get(KEY, 2, compute(2), fresh=True) == ({"v": 2}, False)
    assert calls == [1, 2]
    cache.forget("e")
    assert not cache._key_locks  # a deleted experiment leaves no per-key lock behind
    assert cache.get(KEY, 2, compute(2), fresh=False) == ({"v": 2}, False)
    assert calls == [1, 2, 2]


def test_bounded_in_bytes():
    cache = StatsCache(max_bytes=100)
    for i in range(5):
        key = (RunKey("e", f"a{i}", "ctr", "eval"), 1, None)
        cache.get(key, 1, lambda i=i: ({"v": i}, 40), fresh=False)
    assert cache._bytes <= 100  # the oldest entries went


def test_cheap_statistics_are_recomputed_for_the_reader():
    cache = StatsCache()
    assert cache.get(KEY, 1, lambda: ({"v": 1}, 8), fresh=False) == ({"v": 1}, False)
    assert cache.get(KEY, 2, lambda: ({"v": 2}, 8), fresh=False) == ({"v": 2}, False)
