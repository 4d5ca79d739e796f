"""rankboard.service.rest: the FastAPI app that serves snapshots for dashboards."""

from rankboard.service.rest.app import create_app

__all__ = ["create_app"]
