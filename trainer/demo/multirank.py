"""One arm of the demo on several ranks (gloo), each rank its own producer.

Run under torchrun against a running service::

    rankboard serve --grpc-port 50051 --http-port 8000 --data-dir .demo/multirank &
    python -m torch.distributed.run --nproc-per-node 2 \\
        -m rankboard.trainer.demo.multirank --target 127.0.0.1:50051 --arm multirank

The embedding tables are sharded table-wise over the ranks by
``DistributedModelParallel`` (gloo all-to-all), the dense part is data
parallel, each rank trains on its half of every global batch and evaluates its
half of the held-out rows, and streams them with producer id
``<run id>/rank<k>`` (the run id is torchrun's, shared by the ranks). The
service's eval metrics of the arm, grouped AUC by user included, are those of
all held-out rows, as if one process had evaluated them.
"""

from __future__ import annotations

import sys

from rankboard.trainer.demo.train import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
