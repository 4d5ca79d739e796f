"""The rankboard demo: an A/B experiment of two optimizer configs, measured by the service.

``make demo`` (``python -m rankboard.trainer.demo``) starts ``rankboard serve``
on free loopback ports with its state under ``.demo/``, trains the ``control``
and ``treatment`` arms of experiment ``demo`` (:mod:`.train`: a small DLRM on
torchrec, sharded with DistributedModelParallel on a gloo world of one, on the
synthetic click log of :mod:`.data`), streams their training and evaluation
predictions with :class:`rankboard.trainer.client.MetricsStream`, prints the
service's comparison of the two arms (fetched over REST) and stops the service.

The arms' optimizers come from ``control.config`` and ``treatment.config``
beside this file (tzrec ``train_config`` text). :mod:`.multirank` runs one arm
on two ranks under torchrun.
"""
