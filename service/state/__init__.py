"""rankboard.service.state: runs, their metric state, and its durability.

The domain of the service: it knows nothing of gRPC or HTTP. A
:class:`~rankboard.service.state.store.MetricStore` applies decoded batches to
per-(experiment, arm, task, phase) runs, logs them ahead in a write-ahead log,
checkpoints, and answers snapshots from a cache.
"""
