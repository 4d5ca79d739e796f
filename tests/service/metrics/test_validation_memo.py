"""The validation memo (several metrics checking one batch) pins no batch's memory."""

from __future__ import annotations

import gc
import weakref

import torch

from rankboard.service.metrics import AUC


def test_a_validated_batch_is_freed_when_its_caller_drops_it() -> None:
    metric = AUC()
    preds, target = torch.rand(1000), (torch.rand(1000) < 0.3).float()
    metric.check_inputs(preds, target)  # validates (and memoizes) both tensors
    gone = weakref.ref(preds), weakref.ref(target)
    del preds, target
    gc.collect()
    assert gone[0]() is None and gone[1]() is None


def test_the_decoders_ranges_are_not_taken_again(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import numpy as np

    from rankboard.protos.wire import encode_batch
    from rankboard.service.metrics.functional import _validation
    from rankboard.service.state.batch import decode_batch

    msg = encode_batch(
        producer_id="p",
        experiment="e",
        arm="a",
        task="ctr",
        phase="eval",
        step=1,
        predictions=np.linspace(0.1, 0.9, 100),
        labels=np.arange(100) % 2,
        weights=np.full(100, 2.0),
    )
    batch = decode_batch(msg, raw=msg.SerializeToString())
    taken: list[int] = []
    real = _validation._range_cpu
    monkeypatch.setattr(_validation, "_range_cpu", lambda x: taken.append(1) or real(x))
    AUC().check_inputs(batch.predictions, batch.labels, weights=batch.weights)
    assert taken == []  # min / max of the three columns came from the decoder
