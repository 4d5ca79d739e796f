"""The read side: snapshots with their A/B statistics, comparisons and histories.

Every front end (REST routes, the dashboard, the Prometheus collector, the CLI through
REST) reads through these functions; they know nothing of HTTP. Point values come from
the store's snapshot cache; the statistics (:mod:`rankboard.service.metrics.stats`)
from a cache of per-arm statistics keyed by (run, step, state version, cluster), so a
dashboard that polls every few seconds computes them once per change of state, and an
eval step's history point (value and interval) once per version of that step.

Example::

    >>> import tempfile, numpy as np
    >>> from rankboard.protos import ingest_pb2
    >>> from rankboard.service.state.batch import encode_array
    >>> from rankboard.service.state.store import MetricStore, StoreConfig
    >>> d = tempfile.TemporaryDirectory()
    >>> store = MetricStore(StoreConfig(data_dir=d.name))
    >>> rng = np.random.default_rng(0)
    >>> y = rng.integers(0, 2, 400).astype(np.float32)
    >>> for arm, shift in (("a", 0.0), ("b", 0.1)):
    ...     p = np.clip(0.3 + 0.3 * y + shift * y + rng.normal(0, 0.2, 400), 0, 1)
    ...     _ = store.ingest(ingest_pb2.Batch(producer_id=arm, sequence=1, experiment="e",
    ...         arm=arm, task="ctr", phase=ingest_pb2.PHASE_EVAL, step=1,
    ...         predictions=encode_array(p.astype(np.float32)), labels=encode_array(y),
    ...         sample_ids=encode_array(np.arange(400, dtype=np.int64))))
    >>> out = compare(store, "e", "ctr", "a", QueryParams())
    >>> out["arms"]["b"]["paired"], out["arms"]["b"]["verdicts"]["auc"]
    (True, 'better')
    >>> store.close(); d.cleanup()
"""

from rankboard.service.state.query.arms import ArmData, arm_data, metrics_snapshot
from rankboard.service.state.query.cache import STATS_CACHE_BYTES, StatsCache
from rankboard.service.state.query.compare import common_step, compare
from rankboard.service.state.query.experiments import experiment_detail, experiments
from rankboard.service.state.query.history import forget, history, thin
from rankboard.service.state.query.params import QueryParams, resolve_cluster

__all__ = [
    "STATS_CACHE_BYTES",
    "ArmData",
    "QueryParams",
    "StatsCache",
    "arm_data",
    "common_step",
    "compare",
    "experiment_detail",
    "experiments",
    "forget",
    "history",
    "metrics_snapshot",
    "resolve_cluster",
    "thin",
]
