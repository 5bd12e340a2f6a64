"""Jobs: submit a bundle, list and read jobs, cancel and retry them."""

from __future__ import annotations

from typing import Optional

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from ..errors import BadInput
from .common import NOT_FOUND, TOKEN, Id, ServiceDep, StateDep, answer, errors
from .schemas import JobList, JobOut, JobSubmit, RetryFrames

router = APIRouter(dependencies=TOKEN)


@router.post("/v1/jobs", status_code=201, response_model=JobOut, responses=errors(429))
def submit(body: JobSubmit, state: StateDep) -> JSONResponse:
    service = state.service
    if not state.submits.acquire(blocking=False):
        raise BadInput(
            "bundle_dir",
            f"{service.config.limits.max_concurrent_submits} submissions are "
            "already being read (limits.max_concurrent_submits); retry shortly",
            429,
        )
    try:
        job = service.submit(body.bundle_dir, body.parameter_values, body.priority, body.name)
    finally:
        state.submits.release()
    return answer(job.to_json(), 201)


@router.get("/v1/jobs", response_model=JobList)
def jobs(service: ServiceDep, state: Optional[str] = None) -> JSONResponse:
    return answer({"jobs": [j.to_json() for j in service.jobs(state)]})


@router.get("/v1/jobs/{job_id}", response_model=JobOut, responses=NOT_FOUND)
def job(job_id: Id, service: ServiceDep) -> JSONResponse:
    return answer(service.job(job_id).to_json())


@router.post("/v1/jobs/{job_id}/cancel", response_model=JobOut, responses=NOT_FOUND)
def cancel(job_id: Id, service: ServiceDep) -> JSONResponse:
    return answer(service.cancel(job_id).to_json())


@router.post("/v1/jobs/{job_id}/retry", response_model=JobOut, responses=errors(404, 409))
def retry(job_id: Id, service: ServiceDep, body: Optional[RetryFrames] = None) -> JSONResponse:
    if body is None or (body.frames is None and not body.flagged):
        if body is not None and body.step is not None:
            raise BadInput("step", "a step is given only with frames or flagged")
        return answer(service.retry(job_id).to_json())
    if body.frames is not None and body.flagged:
        raise BadInput("flagged", "give frames or flagged, not both")
    return answer(service.retry_frames(job_id, body.frames, body.flagged, body.step).to_json())
