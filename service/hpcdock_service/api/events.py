"""The event stream: every change of a job, task or frame, resumable from the last id seen."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from typing import Optional

from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from ..errors import BadInput
from .common import TOKEN, ApiState, StateDep
from .schemas import MAX_ID, EventData

router = APIRouter(dependencies=TOKEN)


def _keepalive_seconds() -> float:
    """Seconds between heartbeat comments on an idle stream: ``HPCDOCK_KEEPALIVE`` or 10."""
    try:
        value = float(os.environ.get("HPCDOCK_KEEPALIVE", ""))
    except ValueError:
        return 10.0
    return value if value > 0 else 10.0


KEEPALIVE_SECONDS = _keepalive_seconds()
EVENT_BATCH = 500


class EventStream(StreamingResponse):
    media_type = "text/event-stream"


@router.get(
    "/v1/events",
    response_class=EventStream,
    responses={
        200: {
            "model": EventData,
            "description": "Server-Sent Events: `id:` the event id, `event:` its kind, `data:` this "
            "object; comment lines keep an idle stream alive",
        }
    },
)
async def events(
    request: Request,
    state: StateDep,
    job: Optional[int] = Query(None, ge=0, le=MAX_ID),
    since: Optional[int] = Query(None, ge=0, le=MAX_ID),
    last_event_id: Optional[str] = Header(None),
) -> EventStream:
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
    return EventStream(
        _stream(request, state, start, job),
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


async def _stream(
    request: Request, state: ApiState, last_id: int, job_id: Optional[int]
) -> AsyncIterator[str]:
    service = state.service
    loop = asyncio.get_running_loop()
    changed = asyncio.Event()

    def on_change(_: int) -> None:
        try:
            loop.call_soon_threadsafe(changed.set)
        except RuntimeError:
            pass  # the loop is gone: the client left

    service.add_event_listener(on_change)
    state.streams.add(on_change)
    try:
        yield ": connected\n\n"
        while not state.closing.is_set() and not await request.is_disconnected():
            changed.clear()
            events = await run_in_threadpool(service.events_after, last_id, job_id, EVENT_BATCH)
            if events:
                yield "".join(f"id: {e.id}\nevent: {e.kind.value}\ndata: {e.data}\n\n" for e in events)
                last_id = events[-1].id
                if len(events) == EVENT_BATCH:
                    continue
            try:
                await asyncio.wait_for(changed.wait(), KEEPALIVE_SECONDS)
            except asyncio.TimeoutError:
                yield ": keepalive\n\n"
    finally:
        state.streams.discard(on_change)
        service.remove_event_listener(on_change)
