"""The cloud REST API (FastAPI): thin routers per resource over the ORM."""

from cloud.api.app import create_app

__all__ = ["create_app"]
