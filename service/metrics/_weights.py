"""Per-sample weights kept beside retained samples, and states added after a checkpoint.

A metric that keeps samples (cat states) keeps a ``weights`` list beside them: one chunk
per update, an *empty* chunk for an unweighted update, so unweighted streams keep no
weights at all (no memory, no time). :func:`aligned_weights` rebuilds the full weight
vector at compute; it returns None when no update was weighted, so unweighted computes
take their unweighted (faster) kernels.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["aligned_weights", "fill_missing_weights"]


def _chunks(state: list[Tensor] | Tensor) -> list[Tensor]:
    return [state] if isinstance(state, Tensor) else list(state)


def aligned_weights(
    preds_state: list[Tensor] | Tensor, weights_state: list[Tensor] | Tensor
) -> Tensor | None:
    """The float32 weight of every retained sample, or None when all are unweighted.

    >>> p = [torch.zeros(2), torch.zeros(3)]
    >>> aligned_weights(p, [torch.empty(0), torch.empty(0)]) is None
    True
    >>> aligned_weights(p, [torch.empty(0), torch.full((3,), 2.0)]).tolist()
    [1.0, 1.0, 2.0, 2.0, 2.0]
    """
    w_chunks = _chunks(weights_state)
    given = sum(int(w.numel()) for w in w_chunks)
    if given == 0:
        return None
    p_chunks = _chunks(preds_state)
    n = sum(int(p.shape[0]) for p in p_chunks)
    if given == n:
        return torch.cat(w_chunks) if len(w_chunks) > 1 else w_chunks[0]
    if len(w_chunks) != len(p_chunks):
        raise ValueError(
            f"weights state has {len(w_chunks)} chunks for {len(p_chunks)} sample chunks"
        )
    return torch.cat(
        [
            w if w.numel() else torch.ones(int(p.shape[0]), dtype=torch.float32, device=p.device)
            for w, p in zip(w_chunks, p_chunks, strict=True)
        ]
    )


def fill_missing_weights(preds_state: list[Tensor] | Tensor) -> list[Tensor]:
    """The weights state of samples saved before the metric kept weights: all unweighted.

    >>> [w.numel() for w in fill_missing_weights([torch.zeros(2), torch.zeros(3)])]
    [0, 0]
    """
    return [p.new_empty(0, dtype=torch.float32) for p in _chunks(preds_state)]
