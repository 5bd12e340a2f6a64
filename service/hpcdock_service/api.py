"""The HTTP API under ``/v1`` (see docs/api.md), with the resumable event stream.

Handlers are thin: they check the token, call :class:`~.service.Service` or the store,
and turn :class:`~.errors.BadInput` into a 4xx whose body names the field. Anything else
escaping a handler is a bug, logged, and answered as a 500 without a traceback.
"""

from __future__ import annotations

import asyncio
import hmac
import itertools
import json
import logging
import os
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any, Callable, Optional, Union, cast

from fastapi import Depends, FastAPI, Header, Query, Request
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse, Response, StreamingResponse
from hpcdock import endpoint
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PlainValidator,
    StrictInt,
    StrictStr,
    WithJsonSchema,
)
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

from . import __version__, tasklog, thumbnails
from .bundle import MAX_FRAME
from .errors import BadInput, NotFound, text_problem
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


MAX_ID = 2**63 - 1  # ids and event ids are SQLite integers


def _clean_text(value: str) -> str:
    problem = text_problem(value)
    if problem:
        raise ValueError(problem)
    return value


Text = Annotated[StrictStr, AfterValidator(_clean_text)]


def _param_value(value: Any) -> Union[str, int, float]:
    """A job parameter value: a string or a number (not a bool, list or mapping)."""
    if isinstance(value, str) and len(value) <= 65536:
        return _clean_text(value)
    if isinstance(value, float) or (
        isinstance(value, int) and not isinstance(value, bool) and -MAX_ID - 1 <= value <= MAX_ID
    ):
        return value
    raise ValueError("must be a string (at most 65536 characters) or a number")


ParamValue = Annotated[
    Union[str, int, float],
    PlainValidator(_param_value),
    WithJsonSchema({"anyOf": [{"type": "string", "maxLength": 65536}, {"type": "number"}]}),
]
Id = Annotated[int, PathParam(ge=0, le=MAX_ID)]
Frame = Annotated[int, PathParam(ge=-MAX_FRAME, le=MAX_FRAME)]


class JobSubmit(BaseModel):
    model_config = ConfigDict(extra="forbid")
    bundle_dir: Text = Field(
        description="Absolute path of the job bundle directory on this machine", max_length=4096
    )
    parameter_values: Optional[dict[Annotated[Text, Field(max_length=1024)], ParamValue]] = Field(
        None, description="Overrides of job parameters, by name", max_length=1000
    )
    priority: Optional[StrictInt] = Field(None, ge=0, le=100)
    name: Optional[Annotated[Text, Field(max_length=1024)]] = None


class RetryFrames(BaseModel):
    """Which frames to render again; no body at all retries the job's failed and canceled tasks."""

    model_config = ConfigDict(extra="forbid")
    frames: Optional[list[Annotated[StrictInt, Field(ge=-MAX_FRAME, le=MAX_FRAME)]]] = Field(
        None, description="Frame numbers to render again (only these)", min_length=1, max_length=100000
    )
    flagged: bool = Field(False, description="Render again every frame a check flagged")
    step: Optional[Annotated[Text, Field(max_length=1024)]] = Field(
        None, description="The step whose frames these are (default: the last step that has each frame)"
    )


class ErrorDetail(BaseModel):
    field: str = Field(description="What was refused: a request field, header, or a bundle file and key")
    message: str = Field(description="Why, in words")


class ErrorBody(BaseModel):
    error: ErrorDetail


def _errors(*statuses: int) -> dict[Union[int, str], dict[str, Any]]:
    """OpenAPI entries for the 4xx answers a route gives, all with the :class:`ErrorBody` body."""
    return {status: {"model": ErrorBody, "description": _ERROR_TEXT[status]} for status in statuses}


_ERROR_TEXT = {
    400: "Refused input; `error.field` names the field (or bundle file and key), `error.message` why",
    401: "Missing or wrong bearer token",
    404: "No such job, task or frame",
    409: "The job is not in a state that allows this (e.g. retrying a running job)",
    422: "A request parameter or body field has the wrong type or range",
    429: "Too many submissions are being read at once; retry shortly",
}
NOT_FOUND = _errors(404)


LIST_BATCH = 1000  # rows encoded per chunk of a streamed listing


def _json_list(key: str, rows: Iterator[dict[str, Any]]) -> StreamingResponse:
    """``{key: [rows]}`` streamed in batches: a 100,000-task job's listing is never held whole,
    neither as rows nor as one JSON text (FastAPI would also copy it through jsonable_encoder)."""

    def chunks() -> Iterator[bytes]:
        yield b'{"' + key.encode() + b'": ['
        first = True
        for batch in iter(lambda: list(itertools.islice(rows, LIST_BATCH)), []):
            text = ", ".join(json.dumps(r, ensure_ascii=False) for r in batch)
            yield (text if first else ", " + text).encode()
            first = False
        yield b"]}"

    return StreamingResponse(chunks(), media_type="application/json")


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
                response = _error(
                    400,
                    "Host",
                    f"{host!r} is not a name of this machine's loopback; "
                    f"hpcdock-service answers only to {', '.join(sorted(self.allowed))}",
                )
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


OPENAPI_FILE = "docs/openapi.json"  # the committed contract, in the repository


class _SchemaOnly:
    """What :func:`create_app` reads from a service while it builds the routes: the schema depends on
    the routes alone, so it can be made with no state directory, store or engine behind them."""

    def __init__(self, token: str) -> None:
        from .config import ServiceConfig

        self.config = ServiceConfig()
        self.token = token
        self.store = None


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
        responses=_errors(400, 401, 422),
        description="Runs OpenJD job bundles as containers on a rootless engine.",
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
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
    default_openapi = app.openapi

    def openapi_document() -> dict[str, Any]:
        """The document, with every error body JSON (text routes would otherwise declare text/plain)."""
        doc = default_openapi()
        for item in doc["paths"].values():
            for op in item.values():
                for status, response in op["responses"].items():
                    if status.startswith("4"):
                        response["content"] = {
                            "application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}
                        }
        return doc

    app.openapi = openapi_document  # type: ignore[method-assign]
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
    def hello(
        request: Request, nonce: str = Query(..., min_length=16, max_length=128, pattern="^[A-Za-z0-9_-]+$")
    ) -> dict[str, str]:
        """The TCP client's challenge: proves this service holds the token before the client
        sends it (see hpcdock.endpoint.proof), bound to the address this connection reached."""
        server = request.scope.get("server") or ("unix", None)
        return {"proof": endpoint.proof(service.token, nonce, endpoint.address_of(server))}

    # -- jobs ---------------------------------------------------------------------------
    # Reading and expanding a bundle is blocking work on a worker thread; bounding how many run
    # at once keeps a flood of (hostile or merely huge) submissions from taking every worker.
    submits = threading.BoundedSemaphore(service.config.limits.max_concurrent_submits)

    @app.post("/v1/jobs", status_code=201, dependencies=v1, responses=_errors(429))
    def submit(body: JobSubmit) -> dict[str, Any]:
        if not submits.acquire(blocking=False):
            raise BadInput(
                "bundle_dir",
                f"{service.config.limits.max_concurrent_submits} submissions are "
                "already being read (limits.max_concurrent_submits); retry shortly",
                429,
            )
        try:
            return service.submit(body.bundle_dir, body.parameter_values, body.priority, body.name)
        finally:
            submits.release()

    @app.get("/v1/jobs", dependencies=v1)
    def jobs(state: Optional[str] = None) -> dict[str, Any]:
        return {"jobs": store.jobs(state)}

    @app.get("/v1/jobs/{job_id}", dependencies=v1, responses=NOT_FOUND)
    def job(job_id: Id) -> dict[str, Any]:
        return store.job(job_id)

    @app.post("/v1/jobs/{job_id}/cancel", dependencies=v1, responses=NOT_FOUND)
    def cancel(job_id: Id) -> dict[str, Any]:
        return service.cancel(job_id)

    @app.post("/v1/jobs/{job_id}/retry", dependencies=v1, responses=_errors(404, 409))
    def retry(job_id: Id, body: Optional[RetryFrames] = None) -> dict[str, Any]:
        if body is None or (body.frames is None and not body.flagged):
            if body is not None and body.step is not None:
                raise BadInput("step", "a step is given only with frames or flagged")
            return service.retry(job_id)
        if body.frames is not None and body.flagged:
            raise BadInput("flagged", "give frames or flagged, not both")
        return service.retry_frames(job_id, body.frames, body.flagged, body.step)

    @app.get("/v1/jobs/{job_id}/tasks", dependencies=v1, responses=NOT_FOUND)
    def tasks(job_id: Id) -> dict[str, Any]:
        store.job(job_id)  # a 404 before the listing starts
        return _json_list("tasks", store.iter_tasks(job_id))  # type: ignore[return-value]

    @app.get("/v1/jobs/{job_id}/frames", dependencies=v1, responses=NOT_FOUND)
    def frames(job_id: Id) -> dict[str, Any]:
        store.job(job_id)
        return _json_list("frames", store.iter_frames(job_id))  # type: ignore[return-value]

    @app.get(
        "/v1/jobs/{job_id}/frames/{frame}/thumbnail",
        dependencies=v1,
        responses=NOT_FOUND,
        response_class=FileResponse,
    )
    def thumbnail(job_id: Id, frame: Frame, step: Optional[str] = None) -> Response:
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

    @app.get("/v1/tasks/{task_id}", dependencies=v1, responses=NOT_FOUND)
    def task(task_id: Id) -> dict[str, Any]:
        return store.task(task_id)

    @app.get(
        "/v1/tasks/{task_id}/log", dependencies=v1, responses=NOT_FOUND, response_class=PlainTextResponse
    )
    def task_log(task_id: Id, offset: int = Query(0, ge=0, le=MAX_ID)) -> Response:
        store.task(task_id)
        # Offsets count bytes as the task printed them, across the cuts of capped attempts:
        # X-Log-Next is where to read on (past a cut it is more than offset + the bytes sent).
        data, following, size = tasklog.read(service.scheduler.log_path(task_id), offset, tasklog.READ_LIMIT)
        return Response(
            data,
            media_type="text/plain; charset=utf-8",
            headers={"X-Log-Size": str(size), "X-Log-Next": str(following)},
        )

    # -- events -------------------------------------------------------------------------
    @app.get("/v1/events", dependencies=v1)
    async def events(
        request: Request,
        job: Optional[int] = Query(None, ge=0, le=MAX_ID),
        since: Optional[int] = Query(None, ge=0, le=MAX_ID),
        last_event_id: Optional[str] = Header(None),
    ) -> StreamingResponse:
        start = since or 0
        if last_event_id:
            try:
                start = int(last_event_id)
            except ValueError:
                start = -1
            if not 0 <= start <= MAX_ID:
                raise BadInput(
                    "Last-Event-ID",
                    f"must be an event id (a whole number from 0 to {MAX_ID}), got {last_event_id[:40]!r}",
                )
        return StreamingResponse(
            _stream(request, start, job),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

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
