"""The HTTP API under ``/v1`` (see docs/api.md): one router per resource, the app that serves them."""

from .app import OPENAPI_FILE, create_app, openapi_text, schema_app

__all__ = ["OPENAPI_FILE", "create_app", "openapi_text", "schema_app"]
