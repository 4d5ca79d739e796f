"""Helpers shared by the trainer tests: a small two-table ranker and its batches.

Import them from here (``from tests.trainer.helpers import ...``), never from a test
file or a conftest; the fixtures that use them are in tests/trainer/conftest.py.
"""

from __future__ import annotations

import torch
import torchrec
from torch import nn

NUM_ROWS = 16
DIM = 4


class SmallRanker(nn.Module):
    """Two embedding tables (user, item) pooled and fed to a 2-layer MLP."""

    def __init__(self, device: torch.device | str = "meta") -> None:
        super().__init__()
        self.ebc = torchrec.EmbeddingBagCollection(
            tables=[
                torchrec.EmbeddingBagConfig(
                    name=f"t_{f}", embedding_dim=DIM, num_embeddings=NUM_ROWS, feature_names=[f]
                )
                for f in ("user", "item")
            ],
            device=torch.device(device),
        )
        self.over = nn.Sequential(nn.Linear(2 * DIM, 8), nn.ReLU(), nn.Linear(8, 1))

    def forward(self, kjt: torchrec.KeyedJaggedTensor) -> torch.Tensor:
        return self.over(self.ebc(kjt).values()).squeeze(-1)


def make_batch(
    batch_size: int, generator: torch.Generator
) -> tuple[torchrec.KeyedJaggedTensor, torch.Tensor]:
    """One id per feature and sample; the label is learnable from the user id alone."""
    users = torch.randint(0, NUM_ROWS, (batch_size,), generator=generator)
    items = torch.randint(0, NUM_ROWS, (batch_size,), generator=generator)
    kjt = torchrec.KeyedJaggedTensor.from_lengths_sync(
        keys=["user", "item"],
        values=torch.cat([users, items]),
        lengths=torch.ones(2 * batch_size, dtype=torch.int64),
    )
    return kjt, (users % 2).float()
