"""Optimizers, learning-rate schedules and the training-step wrapper from tzrec configs.

- :mod:`.builder`: ``(class, kwargs)`` pairs and schedulers from config messages
  (tzrec's names: ``create_sparse_optimizer``, ``create_dense_optimizer``, ...);
- :mod:`.lr_scheduler`: closed-form schedules registered by config message name;
- :mod:`.fused`: sparse optimizers fused into fbgemm embedding kernels;
- :mod:`.wrapper`: gradient accumulation and AMP loss scaling;
- :mod:`.ema`: tzrec's dense EMA (``dense_optimizer { ema {} }``);
- :mod:`.train_optimizers`: :func:`build_optimizers`, all of the above from a TrainConfig.

Example::

    >>> from rankboard.trainer.optim import SCHEDULERS
    >>> sorted(SCHEDULERS)[:2]
    ['ConstantLR', 'CosineAnnealingLR']
"""

from rankboard.trainer.optim import builder
from rankboard.trainer.optim.builder import *  # noqa: F403 (its __all__, re-exported below)
from rankboard.trainer.optim.ema import DenseEMA, EMAOptimizer
from rankboard.trainer.optim.fused import (
    apply_sparse_optimizer,
    dense_named_parameters,
    set_initial_accumulator,
    table_wise_sharding_plan,
)
from rankboard.trainer.optim.lr_scheduler import (
    SCHEDULERS,
    BaseLR,
    ConstantLR,
    CosineAnnealingLR,
    CosineAnnealingWarmRestartsLR,
    ExponentialDecayLR,
    ManualStepLR,
)
from rankboard.trainer.optim.train_optimizers import (
    GRAD_CLIPPING_TYPES,
    TrainOptimizers,
    build_optimizers,
    check_train_config,
)
from rankboard.trainer.optim.wrapper import MIXED_PRECISION_DTYPES, TrainStepOptimizer

__all__ = [
    "GRAD_CLIPPING_TYPES",
    "MIXED_PRECISION_DTYPES",
    "SCHEDULERS",
    "BaseLR",
    "ConstantLR",
    "CosineAnnealingLR",
    "CosineAnnealingWarmRestartsLR",
    "DenseEMA",
    "EMAOptimizer",
    "ExponentialDecayLR",
    "ManualStepLR",
    "TrainOptimizers",
    "TrainStepOptimizer",
    "apply_sparse_optimizer",
    "build_optimizers",
    "check_train_config",
    "dense_named_parameters",
    "set_initial_accumulator",
    "table_wise_sharding_plan",
]
__all__ += builder.__all__  # the builders: create_*_optimizer, create_scheduler, ...
