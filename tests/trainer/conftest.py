"""Fixtures for rankboard.trainer tests: a gloo process group and small sharded models.

The model and batch helpers are in tests/trainer/helpers.py.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
import torch
import torch.distributed as dist
from torchrec.distributed import DistributedModelParallel

from rankboard.protos import optimizer_pb2
from rankboard.trainer.optim import apply_sparse_optimizer, table_wise_sharding_plan
from tests.trainer.helpers import SmallRanker


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
