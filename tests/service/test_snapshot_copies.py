"""Snapshot copies are taken under the lock and computed outside it: later updates
must not leak into a copy (a regression: copies once computed on the live state)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from rankboard.service.state.batch import decode_batch
from rankboard.service.state.run import Run
from tests.helpers import make_batch, sklearn_gauc


def test_copies_do_not_see_later_updates() -> None:
    rng = np.random.default_rng(3)
    p = rng.random(4000).astype(np.float32)
    y = (rng.random(4000) < 0.4).astype(np.float32)
    g = rng.integers(0, 50, 4000)
    first = decode_batch(
        make_batch(preds=p[:2000], labels=y[:2000], keys={"user_id": g[:2000]}, seq=1)
    )
    run = Run.create(first, torch.device("cpu"))
    run.check(first)
    run.apply(first)
    copies, samples = run.sources(1)
    second = decode_batch(
        make_batch(preds=p[2000:], labels=y[2000:], keys={"user_id": g[2000:]}, seq=2)
    )
    run.apply(second)  # after the copy: invisible to it
    assert samples == 2000
    assert copies["auc"].compute().item() == pytest.approx(
        roc_auc_score(y[:2000], p[:2000]), abs=1e-12
    )
    assert copies["grouped_auc"].compute().item() == pytest.approx(
        sklearn_gauc(p[:2000], y[:2000], g[:2000]), abs=1e-12
    )
    now, samples = run.sources(1)
    assert samples == 4000
    assert now["auc"].compute().item() == pytest.approx(roc_auc_score(y, p), abs=1e-12)
    assert now["grouped_auc"].compute().item() == pytest.approx(sklearn_gauc(p, y, g), abs=1e-12)
