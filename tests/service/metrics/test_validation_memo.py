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
