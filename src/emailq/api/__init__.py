"""The HTTP intake API (FastAPI): build it with :func:`create_app`."""

from emailq.api.app import create_app

__all__ = ["create_app"]
