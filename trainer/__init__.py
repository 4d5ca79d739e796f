"""rankboard.trainer: optimizers and losses from tzrec configs, and the streaming client."""
