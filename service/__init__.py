"""rankboard.service: the metrics engine and the metrics service."""
