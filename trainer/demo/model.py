"""The demo's small DLRM: sharded embedding tables, a dense MLP, pairwise dot interactions.

Sparse features (user, item, category ids) go through a torchrec
``EmbeddingBagCollection`` sharded with ``DistributedModelParallel``; its
optimizer is fused into fbgemm's kernels (applied before sharding, see
:func:`rankboard.trainer.optim.apply_sparse_optimizer`). Dense features go
through a bottom MLP; the dot products of every pair of the four vectors plus
the dense vector feed the top MLP, which has two heads: the click logit and the
log watch time.

Example (unsharded, on the CPU)::

    >>> import torch
    >>> model = DemoDLRM(num_users=10, num_items=20, num_categories=NUM_CATEGORIES,
    ...                  device=torch.device("cpu"))
    >>> batch = make_click_data(num_samples=5, num_users=10, num_items=20, seed=1)
    >>> ctr_logit, log_watch = model(*model_inputs(batch))
    >>> ctr_logit.shape, log_watch.shape
    (torch.Size([5]), torch.Size([5]))
"""

from __future__ import annotations

import itertools

import torch
from torch import nn
from torchrec import EmbeddingBagCollection, EmbeddingBagConfig, KeyedJaggedTensor

from rankboard.trainer.demo.data import (  # noqa: F401  (make_click_data: doctest)
    NUM_CATEGORIES,
    NUM_DENSE,
    ClickData,
    make_click_data,
)

__all__ = ["SPARSE_FEATURES", "DemoDLRM", "model_inputs"]

SPARSE_FEATURES = ("user", "item", "category")


def model_inputs(batch: ClickData) -> tuple[KeyedJaggedTensor, torch.Tensor]:
    """The sparse (one id per feature and row) and dense inputs of ``batch``."""
    n = len(batch)
    values = torch.cat([batch.user, batch.item, batch.category])
    kjt = KeyedJaggedTensor(
        keys=list(SPARSE_FEATURES),
        values=values,
        lengths=torch.ones(len(SPARSE_FEATURES) * n, dtype=torch.int32),
    )
    return kjt, batch.dense


def _mlp(sizes: list[int], last_activation: bool = True) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(itertools.pairwise(sizes)):
        layers.append(nn.Linear(a, b))
        if last_activation or i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class DemoDLRM(nn.Module):
    """DLRM-style two-head model (click logit, log watch time)."""

    def __init__(
        self,
        num_users: int,
        num_items: int,
        num_categories: int,
        embedding_dim: int = 16,
        device: torch.device | None = None,
    ) -> None:
        super().__init__()
        sizes = {"user": num_users, "item": num_items, "category": num_categories}
        self.ebc = EmbeddingBagCollection(
            tables=[
                EmbeddingBagConfig(
                    name=f"t_{name}",
                    embedding_dim=embedding_dim,
                    num_embeddings=sizes[name],
                    feature_names=[name],
                )
                for name in SPARSE_FEATURES
            ],
            device=device if device is not None else torch.device("meta"),
        )
        self.dense_arch = _mlp([NUM_DENSE, 32, embedding_dim])
        n_vec = len(SPARSE_FEATURES) + 1
        self._pairs = torch.triu_indices(n_vec, n_vec, offset=1)
        self.over_arch = _mlp([embedding_dim + self._pairs.shape[1], 64, 32, 2], False)

    def forward(
        self, sparse: KeyedJaggedTensor, dense: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Click logits and log watch times, one per row."""
        pooled = self.ebc(sparse).to_dict()
        d = self.dense_arch(dense)
        vecs = torch.stack([d, *(pooled[name] for name in SPARSE_FEATURES)], dim=1)
        inter = torch.bmm(vecs, vecs.transpose(1, 2))[:, self._pairs[0], self._pairs[1]]
        out = self.over_arch(torch.cat([d, inter], dim=1))
        return out[:, 0], out[:, 1]
