"""The HTTP intake API (FastAPI): build it with :func:`create_app`."""

from emailq.api.app import ApiSettings, create_app

__all__ = ["ApiSettings", "create_app"]
