"""Frames: a job's frames and their thumbnails."""

from __future__ import annotations

from typing import Optional

from fastapi import APIRouter
from fastapi.responses import FileResponse, StreamingResponse

from .common import NOT_FOUND, TOKEN, FrameNumber, Id, ServiceDep, json_list
from .schemas import FrameList

router = APIRouter(dependencies=TOKEN)


@router.get("/v1/jobs/{job_id}/frames", response_model=FrameList, responses=NOT_FOUND)
def frames(job_id: Id, service: ServiceDep) -> StreamingResponse:
    return json_list("frames", service.frames(job_id))


@router.get(
    "/v1/jobs/{job_id}/frames/{frame}/thumbnail",
    responses=NOT_FOUND,
    response_class=FileResponse,
)
def thumbnail(
    job_id: Id, frame: FrameNumber, service: ServiceDep, step: Optional[str] = None
) -> FileResponse:
    return FileResponse(service.thumbnail(job_id, frame, step), media_type="image/png")
