"""The ASGI app: the routers of each resource under ``/v1``, the token, and how errors are answered.

Handlers are thin: they check the token, call :class:`~..service.Service` (the only way in) and
write its values as JSON; :class:`~..errors.BadInput` becomes a 4xx whose body names the field.
Anything else escaping a handler is a bug, logged, and answered as a 500 without a traceback.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, cast

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from hpcdock import endpoint
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

from .. import __version__
from ..errors import BadInput
from ..service import Service
from . import events, frames, health, jobs, tasks
from .common import TOKEN, ApiState, error, errors

log = logging.getLogger(__name__)

OPENAPI_FILE = "docs/openapi.json"  # the committed contract, in the repository


class LocalHostOnly:
    """Refuse requests whose ``Host`` is not a loopback name (or the configured listen address).

    A web page the user visits can make the browser connect to 127.0.0.1 under a name the
    page's owner controls (DNS rebinding); the ``Host`` header still carries that name.
    """

    def __init__(self, app: ASGIApp, also: str = "") -> None:
        self.app = app
        self.allowed = set(endpoint.LOOPBACK_NAMES) | ({also.lower()} if also else set())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            host = Headers(scope=scope).get("host", "")
            name = host.rpartition("]")[0][1:] if host.startswith("[") else host.partition(":")[0]
            if name.lower() not in self.allowed:
                response = error(
                    400,
                    "Host",
                    f"{host!r} is not a name of this machine's loopback; "
                    f"hpcdock-service answers only to {', '.join(sorted(self.allowed))}",
                )
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


class _SchemaOnly:
    """What :func:`create_app` reads from a service while it builds the app: the schema depends on
    the routes alone, so it can be made with no state directory, store or engine behind them."""

    def __init__(self, token: str) -> None:
        from ..config import ServiceConfig

        self.config = ServiceConfig()
        self.token = token


def schema_app(token: str) -> FastAPI:
    """The API without a service behind it, serving only its schema (with ``token``): what
    ``hpcdock-service --openapi`` prints and the contract test compares with :data:`OPENAPI_FILE`."""
    return create_app(cast(Service, _SchemaOnly(token)))


def openapi_text(doc: dict[str, Any]) -> str:
    """The committed file's form of the schema: stable key order, one trailing newline."""
    return json.dumps(doc, indent=2, ensure_ascii=False) + "\n"


def create_app(service: Service, manage_lifecycle: bool = False) -> FastAPI:
    """The ASGI app; with ``manage_lifecycle`` it starts the service and closes it on shutdown."""

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if manage_lifecycle:
            service.start()
        try:
            yield
        finally:
            if manage_lifecycle:
                service.close()

    # No /docs: a browser cannot send the bearer token. The schema is served below, with the token.
    app = FastAPI(
        title="hpcdock-service",
        version=__version__,
        lifespan=lifespan,
        responses=errors(400, 401, 422),
        description="Runs OpenJD job bundles as containers on a rootless engine.",
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    app.add_middleware(LocalHostOnly, also=service.config.endpoint.host)
    state = ApiState(service, threading.BoundedSemaphore(service.config.limits.max_concurrent_submits))
    app.state.api = state
    default_openapi = app.openapi

    def openapi_document() -> dict[str, Any]:
        """The document, with every error body JSON (text routes would otherwise declare text/plain)
        and the event stream's body its events' model (FastAPI also calls a text body a string)."""
        doc = default_openapi()
        for item in doc["paths"].values():
            for op in item.values():
                for status, response in op["responses"].items():
                    if status.startswith("4"):
                        response["content"] = {
                            "application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}
                        }
                    stream = response.get("content", {}).get(events.EventStream.media_type)
                    if stream is not None:
                        stream["schema"].pop("type", None)
        return doc

    app.openapi = openapi_document  # type: ignore[method-assign]

    @app.exception_handler(BadInput)
    async def bad_input(_: Request, exc: BadInput) -> JSONResponse:
        return error(exc.status, exc.field, exc.message)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        loc = [str(p) for p in first.get("loc", ()) if p not in ("body", "query", "path")]
        return error(422, ".".join(loc) or "request", str(first.get("msg", "invalid request")))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error(exc.status_code, "request", str(exc.detail))

    @app.exception_handler(Exception)
    async def bug(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error")
        return error(500, "service", f"internal error ({exc.__class__.__name__}); see the service log")

    @app.get("/openapi.json", dependencies=TOKEN, include_in_schema=False)
    def openapi() -> dict[str, Any]:
        return app.openapi()

    for router in (
        health.open_router,
        jobs.router,
        tasks.router,
        frames.router,
        events.router,
        health.router,
    ):
        app.include_router(router)
    return app
