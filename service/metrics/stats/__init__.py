"""A/B statistics: standard errors, intervals and paired comparisons for every metric.

Every eval metric exposes *influence values* ``ψ`` (per sample, ``θ̂ - θ ≈ mean(ψ)``);
the layer does the rest once: clustering (sum ``ψ`` within a cluster), pairing
(``ψ_B - ψ_A`` on matched sample ids), standard errors, intervals, p-values, verdicts,
and confidence sequences valid under continuous peeking. Modules, one concern each:

* :mod:`.columns` — :class:`Columns`, one arm's samples; :class:`StatsInputError`;
* :mod:`.variance` — independent / stratified / clustered (Obuchowski) variance of ψ;
* :mod:`.delong` — AUC placement values, O(n log n), weighted, binned; paired DeLong;
* :mod:`.xauc_var` — XAUC as a U-statistic, per-sample concordance in O(n log n);
* :mod:`.grouped` — grouped AUC / XAUC, the groups being the units (delta over groups);
* :mod:`.ratio` — delta method for NE, MSE, MAE, accuracy;
* :mod:`.bootstrap` — Poisson bootstrap with hash(unit, replicate) weights;
* :mod:`.sequential` — asymptotic confidence sequences (Waudby-Smith et al. 2021);
* :mod:`.arms` — :func:`arm_stats`, :class:`ArmStats`: one arm's value, SE and method;
* :mod:`.compare` — :func:`interval`, :func:`compare_arms`: intervals and verdicts.

>>> import numpy as np
>>> from rankboard.service.metrics import AUC
>>> rng = np.random.default_rng(1)
>>> y = rng.integers(0, 2, 5000)
>>> ids = np.arange(5000)
>>> score_a = (y + rng.normal(0, 1.0, 5000)).astype(np.float32)
>>> score_b = (score_a + 0.3 * y + rng.normal(0, 0.3, 5000)).astype(np.float32)
>>> a = arm_stats(AUC(thresholds=0), Columns(score_a, y, sample_ids=ids), name="auc", cluster=None)
>>> b = arm_stats(AUC(thresholds=0), Columns(score_b, y, sample_ids=ids), name="auc", cluster=None)
>>> d = compare_arms(a, b)
>>> d.verdict, d.paired, d.pairing
('better', True, 'paired on 5000 sample ids')
"""

from rankboard.service.metrics.stats.arms import ArmStats, arm_stats
from rankboard.service.metrics.stats.bootstrap import (
    DEFAULT_REPLICATES,
    poisson_counts,
    splitmix64,
)
from rankboard.service.metrics.stats.columns import Columns, StatsInputError, as_numpy
from rankboard.service.metrics.stats.compare import (
    Delta,
    compare_arms,
    higher_is_better,
    interval,
)
from rankboard.service.metrics.stats.delong import (
    auc_influence,
    auc_interval,
    binned_auc_influence,
    delong_variance,
    paired_delong,
)
from rankboard.service.metrics.stats.grouped import grouped_auc_influence, grouped_xauc_influence
from rankboard.service.metrics.stats.metric_columns import columns_from_metric
from rankboard.service.metrics.stats.ratio import (
    accuracy_influence,
    mean_error_influence,
    ne_influence,
)
from rankboard.service.metrics.stats.sequential import (
    DEFAULT_HORIZON,
    always_valid_p_value,
    cs_half_width,
    rho2_for_horizon,
    validate_alpha,
    validate_horizon,
)
from rankboard.service.metrics.stats.variance import influence_variance
from rankboard.service.metrics.stats.xauc_var import xauc_influence, xauc_variance

__all__ = [
    "DEFAULT_HORIZON",
    "DEFAULT_REPLICATES",
    "ArmStats",
    "Columns",
    "Delta",
    "StatsInputError",
    "accuracy_influence",
    "always_valid_p_value",
    "arm_stats",
    "as_numpy",
    "auc_influence",
    "auc_interval",
    "binned_auc_influence",
    "columns_from_metric",
    "compare_arms",
    "cs_half_width",
    "delong_variance",
    "grouped_auc_influence",
    "grouped_xauc_influence",
    "higher_is_better",
    "influence_variance",
    "interval",
    "mean_error_influence",
    "ne_influence",
    "paired_delong",
    "poisson_counts",
    "rho2_for_horizon",
    "splitmix64",
    "validate_alpha",
    "validate_horizon",
    "xauc_influence",
    "xauc_variance",
]
