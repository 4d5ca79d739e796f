"""Fixtures for rankboard.trainer tests: a gloo process group and small sharded models."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
import torch
import torch.distributed as dist
import torchrec
from torch import nn
from torchrec.distributed import DistributedModelParallel

from rankboard.protos import optimizer_pb2
from rankboard.trainer.optim import apply_sparse_optimizer, table_wise_sharding_plan

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


@pytest.fixture(scope="module")
def dist_pg(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """A world-size-1 gloo process group for the module (reuses one that already exists)."""
    if dist.is_initialized():
        yield
        return
    store = tmp_path_factory.mktemp("dist") / "store"
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


ShardedFactory = Callable[[optimizer_pb2.SparseOptimizer], DistributedModelParallel]


@pytest.fixture
def sharded_model(dist_pg: None) -> ShardedFactory:
    """Factory: a SmallRanker with ``sparse_cfg`` fused into its tables, sharded on CPU."""

    def make(sparse_cfg: optimizer_pb2.SparseOptimizer, seed: int = 0) -> DistributedModelParallel:
        torch.manual_seed(seed)
        model = SmallRanker()
        apply_sparse_optimizer(model, sparse_cfg, "cpu")
        plan = table_wise_sharding_plan(model, "cpu")
        return DistributedModelParallel(model, device=torch.device("cpu"), plan=plan)

    return make
