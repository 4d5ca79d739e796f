"""``python -m rankboard.trainer.demo`` (``make demo``): see :mod:`rankboard.trainer.demo.run`."""

import sys

from rankboard.trainer.demo.run import main

if __name__ == "__main__":
    sys.exit(main())
