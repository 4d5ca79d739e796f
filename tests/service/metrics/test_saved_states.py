"""States saved by an earlier rankboard load: data/states_0fec6ec.pt holds the state_dict
and value of every metric kind of test_contract (eval and train, 3 random batches each),
written by the code of commit 0fec6ec, before the metrics moved onto torchmetrics' public
API. They must load and give the same values (sampling metrics: a fresh draw)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from rankboard.protos import metric_pb2 as pb
from rankboard.protos import parse_text
from rankboard.service.metrics import create_metric, create_train_metric

DATA = Path(__file__).parent / "data" / "states_0fec6ec.pt"
SAVED = torch.load(DATA, weights_only=True)


def _build(entry: dict):
    if entry["kind"] == "eval":
        return create_metric(parse_text(entry["config"], pb.MetricConfig()))
    return create_train_metric(parse_text(entry["config"], pb.TrainMetricConfig()))


@pytest.mark.parametrize("entry", SAVED, ids=lambda e: f"{e['kind']}:{e['config']}")
def test_state_saved_before_loads_with_the_same_value(entry: dict) -> None:
    m = _build(entry)
    m.load_state_dict(entry["state"])
    value = m.compute().item()
    sampling = "sample_ratio" in entry["config"] or "max_pairs" in entry["config"]
    if sampling:
        assert math.isfinite(value)
    elif math.isnan(entry["value"]):
        assert math.isnan(value)
    else:
        assert value == pytest.approx(entry["value"], rel=1e-12, abs=1e-12)
    assert sorted(m.state_dict()) == sorted(entry["state"])
    # and it keeps going: one more batch after the load
    rng = np.random.default_rng(1)
    n = 16
    if m.label_kind == "multiclass":
        preds = torch.from_numpy(rng.dirichlet(np.ones(3), n).astype(np.float32))
        target = torch.from_numpy(rng.integers(0, 3, n))
    else:
        preds = torch.from_numpy(rng.random(n).astype(np.float32))
        target = torch.from_numpy((rng.random(n) < 0.4).astype(np.float32))
    kw = {"grouping_key": torch.from_numpy(rng.integers(0, 4, n))} if m.needs_grouping_key else {}
    m.update(preds, target, **kw)
    after = m.compute().item()
    assert math.isfinite(after) or math.isnan(after)


def test_the_file_covers_every_kind() -> None:
    kinds = {e["config"].split(" ")[0] for e in SAVED}
    assert len(SAVED) == 35 and len(kinds) >= 18
    assert np.isfinite([e["value"] for e in SAVED if "normalized_entropy" in e["config"]]).all()
