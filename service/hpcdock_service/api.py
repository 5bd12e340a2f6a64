"""The HTTP API under ``/v1`` (see docs/api.md), with the resumable event stream.

Handlers are thin: they check the token, call :class:`~.service.Service` or the store,
and turn :class:`~.errors.BadInput` into a 4xx whose body names the field. Anything else
escaping a handler is a bug, logged, and answered as a 500 without a traceback.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Callable, Optional

from fastapi import Depends, FastAPI, Header, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse, Response, StreamingResponse
from hpcdock import endpoint
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

from . import __version__, tasklog, thumbnails
from .errors import BadInput, NotFound
from .service import Service

log = logging.getLogger(__name__)


def _keepalive_seconds() -> float:
    """Seconds between heartbeat comments on an idle stream: ``HPCDOCK_KEEPALIVE`` or 10."""
    try:
        value = float(os.environ.get("HPCDOCK_KEEPALIVE", ""))
    except ValueError:
        return 10.0
    return value if value > 0 else 10.0


KEEPALIVE_SECONDS = _keepalive_seconds()
EVENT_BATCH = 500


class JobSubmit(BaseModel):
    model_config = ConfigDict(extra="forbid")
    bundle_dir: str = Field(description="Absolute path of the job bundle directory on this machine")
    parameter_values: Optional[dict[str, Any]] = Field(None, description="Overrides of job parameters")
    priority: Optional[int] = Field(None, ge=0, le=100)
    name: Optional[str] = None


def _error(status: int, field: str, message: str) -> JSONResponse:
    return JSONResponse({"error": {"field": field, "message": message}}, status_code=status)


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
                response = _error(400, "Host", f"{host!r} is not a name of this machine's loopback; "
                                  f"hpcdock-service answers only to {', '.join(sorted(self.allowed))}")
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


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
    app = FastAPI(title="hpcdock-service", version=__version__, lifespan=lifespan,
                  description="Runs OpenJD job bundles as containers on a rootless engine.",
                  docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(LocalHostOnly, also=service.config.endpoint.host)
    # Open event streams end when the server begins to shut down, so a restart is not held up;
    # clients resume from their last event id.
    closing = threading.Event()
    streams: set[Callable[[int], None]] = set()

    def close_streams() -> None:
        closing.set()
        for wake in list(streams):
            wake(0)

    app.state.close_streams = close_streams
    store = service.store

    # -- errors -------------------------------------------------------------------------
    @app.exception_handler(BadInput)
    async def bad_input(_: Request, exc: BadInput) -> JSONResponse:
        return _error(exc.status, exc.field, exc.message)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        loc = [str(p) for p in first.get("loc", ()) if p not in ("body", "query", "path")]
        return _error(422, ".".join(loc) or "request", str(first.get("msg", "invalid request")))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return _error(exc.status_code, "request", str(exc.detail))

    @app.exception_handler(Exception)
    async def bug(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error")
        return _error(500, "service", f"internal error ({exc.__class__.__name__}); see the service log")

    # -- auth ---------------------------------------------------------------------------
    def authorized(authorization: Optional[str] = Header(None)) -> None:
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip(), service.token):
            # The service's token path is not named: the client that gets this may be another user's.
            raise BadInput("Authorization", "missing or wrong bearer token", 401)

    v1 = [Depends(authorized)]

    @app.get("/openapi.json", dependencies=v1, include_in_schema=False)
    def openapi() -> dict[str, Any]:
        return app.openapi()

    # -- what answers without the token -------------------------------------------------
    @app.get("/v1/live")
    def live() -> dict[str, bool]:
        """Liveness only: says nothing about jobs, engine or configuration."""
        return {"ok": True}

    @app.get("/v1/hello")
    def hello(request: Request, nonce: str = Query(..., min_length=16, max_length=128,
                                                   pattern="^[A-Za-z0-9_-]+$")) -> dict[str, str]:
        """The TCP client's challenge: proves this service holds the token before the client
        sends it (see hpcdock.endpoint.proof), bound to the address this connection reached."""
        server = request.scope.get("server") or ("unix", None)
        return {"proof": endpoint.proof(service.token, nonce, endpoint.address_of(server))}

    # -- jobs ---------------------------------------------------------------------------
    @app.post("/v1/jobs", status_code=201, dependencies=v1)
    def submit(body: JobSubmit) -> dict[str, Any]:
        return service.submit(body.bundle_dir, body.parameter_values, body.priority, body.name)

    @app.get("/v1/jobs", dependencies=v1)
    def jobs(state: Optional[str] = None) -> dict[str, Any]:
        return {"jobs": store.jobs(state)}

    @app.get("/v1/jobs/{job_id}", dependencies=v1)
    def job(job_id: int) -> dict[str, Any]:
        return store.job(job_id)

    @app.post("/v1/jobs/{job_id}/cancel", dependencies=v1)
    def cancel(job_id: int) -> dict[str, Any]:
        return service.cancel(job_id)

    @app.post("/v1/jobs/{job_id}/retry", dependencies=v1)
    def retry(job_id: int) -> dict[str, Any]:
        return service.retry(job_id)

    @app.get("/v1/jobs/{job_id}/tasks", dependencies=v1)
    def tasks(job_id: int) -> dict[str, Any]:
        return {"tasks": store.tasks(job_id)}

    @app.get("/v1/jobs/{job_id}/frames", dependencies=v1)
    def frames(job_id: int) -> dict[str, Any]:
        return {"frames": store.frames(job_id)}

    @app.get("/v1/jobs/{job_id}/frames/{frame}/thumbnail", dependencies=v1, response_class=FileResponse)
    def thumbnail(job_id: int, frame: int, step: Optional[str] = None) -> Response:
        path = store.thumbnail_path(job_id, frame, step)
        if path is None:
            info = store.frame(job_id, frame, step)
            if info["state"] != "done" or not info["output"]:
                raise NotFound("frame", f"frame {frame} of job {job_id} has no thumbnail ({info['state']})")
            dest = service.scheduler.thumbnail_path(job_id, info["step"], frame)
            try:  # made when the frame finished unless that failed; made once here, then cached
                path = str(dest if dest.exists() else thumbnails.make_thumbnail(Path(info["output"]), dest))
            except thumbnails.ThumbnailError as exc:
                raise NotFound("frame", str(exc)) from None
        return FileResponse(path, media_type="image/png")

    @app.get("/v1/tasks/{task_id}", dependencies=v1)
    def task(task_id: int) -> dict[str, Any]:
        return store.task(task_id)

    @app.get("/v1/tasks/{task_id}/log", dependencies=v1, response_class=PlainTextResponse)
    def task_log(task_id: int, offset: int = Query(0, ge=0)) -> Response:
        store.task(task_id)
        # Offsets count bytes as the task printed them, across the cuts of capped attempts:
        # X-Log-Next is where to read on (past a cut it is more than offset + the bytes sent).
        data, following, size = tasklog.read(service.scheduler.log_path(task_id), offset, tasklog.READ_LIMIT)
        return Response(data, media_type="text/plain; charset=utf-8",
                        headers={"X-Log-Size": str(size), "X-Log-Next": str(following)})

    # -- events -------------------------------------------------------------------------
    @app.get("/v1/events", dependencies=v1)
    async def events(request: Request, job: Optional[int] = None, since: Optional[int] = Query(None, ge=0),
                     last_event_id: Optional[str] = Header(None)) -> StreamingResponse:
        start = since or 0
        if last_event_id:
            try:
                start = int(last_event_id)
            except ValueError:
                raise BadInput("Last-Event-ID", f"must be an event id (a whole number), got {last_event_id!r}") from None
        return StreamingResponse(_stream(request, start, job), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    async def _stream(request: Request, last_id: int, job_id: Optional[int]) -> AsyncIterator[str]:
        loop = asyncio.get_running_loop()
        changed = asyncio.Event()

        def on_change(_: int) -> None:
            try:
                loop.call_soon_threadsafe(changed.set)
            except RuntimeError:
                pass  # the loop is gone: the client left

        store.add_listener(on_change)
        streams.add(on_change)
        try:
            yield ": connected\n\n"
            while not closing.is_set() and not await request.is_disconnected():
                changed.clear()
                rows = await run_in_threadpool(store.events_after, last_id, job_id, EVENT_BATCH)
                if rows:
                    yield "".join(f"id: {r['id']}\nevent: {r['kind']}\ndata: {r['data']}\n\n" for r in rows)
                    last_id = rows[-1]["id"]
                    if len(rows) == EVENT_BATCH:
                        continue
                try:
                    await asyncio.wait_for(changed.wait(), KEEPALIVE_SECONDS)
                except asyncio.TimeoutError:
                    yield ": keepalive\n\n"
        finally:
            streams.discard(on_change)
            store.remove_listener(on_change)

    # -- service ------------------------------------------------------------------------
    @app.get("/v1/health", dependencies=v1)
    def health() -> dict[str, Any]:
        return service.health()

    @app.get("/metrics", response_class=PlainTextResponse, dependencies=v1)
    def metrics() -> str:
        return service.metrics_text()

    return app
