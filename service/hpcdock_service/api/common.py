"""What every router shares: the service behind the app, the token check, error answers,
path parameters, and how values are written as JSON."""

from __future__ import annotations

import hmac
import itertools
import json
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Annotated, Any, Callable, Optional, Protocol, Union

from fastapi import Depends, Header, Request
from fastapi import Path as PathParam
from fastapi.responses import JSONResponse, StreamingResponse

from ..bundle_loader import MAX_FRAME
from ..errors import BadInput
from ..model import JSON
from ..service import Service
from .schemas import MAX_ID, ErrorBody


@dataclass
class ApiState:
    """What the routes of one app share: the service, and the event streams open on it."""

    service: Service
    # Reading and expanding a bundle is blocking work on a worker thread; bounding how many run
    # at once keeps a flood of (hostile or merely huge) submissions from taking every worker.
    submits: threading.BoundedSemaphore
    # Open event streams end when the server begins to shut down, so a restart is not held up;
    # clients resume from their last event id.
    closing: threading.Event = field(default_factory=threading.Event)
    streams: set[Callable[[int], None]] = field(default_factory=set)

    def close_streams(self) -> None:
        self.closing.set()
        for wake in list(self.streams):
            wake(0)


def api_state(request: Request) -> ApiState:
    state: ApiState = request.app.state.api
    return state


def _service(request: Request) -> Service:
    return api_state(request).service


ServiceDep = Annotated[Service, Depends(_service)]
StateDep = Annotated[ApiState, Depends(api_state)]


def authorized(request: Request, authorization: Optional[str] = Header(None)) -> None:
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip(), _service(request).token):
        # The service's token path is not named: the client that gets this may be another user's.
        raise BadInput("Authorization", "missing or wrong bearer token", 401)


TOKEN = [Depends(authorized)]

Id = Annotated[int, PathParam(ge=0, le=MAX_ID)]
FrameNumber = Annotated[int, PathParam(ge=-MAX_FRAME, le=MAX_FRAME)]

_ERROR_TEXT = {
    400: "Refused input; `error.field` names the field (or bundle file and key), `error.message` why",
    401: "Missing or wrong bearer token",
    404: "No such job, task or frame",
    409: "The job is not in a state that allows this (e.g. retrying a running job)",
    422: "A request parameter or body field has the wrong type or range",
    429: "Too many submissions are being read at once; retry shortly",
}


def errors(*statuses: int) -> dict[Union[int, str], dict[str, Any]]:
    """OpenAPI entries for the 4xx answers a route gives, all with the :class:`ErrorBody` body."""
    return {status: {"model": ErrorBody, "description": _ERROR_TEXT[status]} for status in statuses}


NOT_FOUND = errors(404)


def error(status: int, field: str, message: str) -> JSONResponse:
    return JSONResponse({"error": {"field": field, "message": message}}, status_code=status)


def answer(value: JSON, status: int = 200) -> JSONResponse:
    """A value's JSON object as the answer, as it is (the route's response model declares it)."""
    return JSONResponse(value, status_code=status)


LIST_BATCH = 1000  # rows encoded per chunk of a streamed listing


class Value(Protocol):
    """A value of :mod:`..model`: what it is on the wire."""

    def to_json(self) -> JSON: ...


def json_list(key: str, values: Iterable[Value]) -> StreamingResponse:
    """``{key: [values]}`` streamed in batches of their ``to_json()``: a 100,000-task job's listing
    is never held whole, neither as values nor as one JSON text."""
    rows = iter(values)

    def chunks() -> Iterator[bytes]:
        yield b'{"' + key.encode() + b'": ['
        first = True
        for batch in iter(lambda: list(itertools.islice(rows, LIST_BATCH)), []):
            text = ", ".join(json.dumps(v.to_json(), ensure_ascii=False) for v in batch)
            yield (text if first else ", " + text).encode()
            first = False
        yield b"]}"

    return StreamingResponse(chunks(), media_type="application/json")
