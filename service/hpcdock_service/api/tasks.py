"""Tasks: a job's tasks, one task, and a task's log."""

from __future__ import annotations

from fastapi import APIRouter, Query
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse

from .common import NOT_FOUND, TOKEN, Id, ServiceDep, answer, json_list
from .schemas import MAX_ID, TaskList, TaskOut

router = APIRouter(dependencies=TOKEN)


@router.get("/v1/jobs/{job_id}/tasks", response_model=TaskList, responses=NOT_FOUND)
def tasks(job_id: Id, service: ServiceDep) -> StreamingResponse:
    return json_list("tasks", service.tasks(job_id))


@router.get("/v1/tasks/{task_id}", response_model=TaskOut, responses=NOT_FOUND)
def task(task_id: Id, service: ServiceDep) -> JSONResponse:
    return answer(service.task(task_id).to_json())


@router.get("/v1/tasks/{task_id}/log", responses=NOT_FOUND, response_class=PlainTextResponse)
def task_log(task_id: Id, service: ServiceDep, offset: int = Query(0, ge=0, le=MAX_ID)) -> Response:
    # Offsets count bytes as the task printed them, across the cuts of capped attempts:
    # X-Log-Next is where to read on (past a cut it is more than offset + the bytes sent).
    part = service.task_log(task_id, offset)
    return Response(
        part.data,
        media_type="text/plain; charset=utf-8",
        headers={"X-Log-Size": str(part.size), "X-Log-Next": str(part.next_offset)},
    )
