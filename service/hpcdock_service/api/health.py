"""What says how the service is: liveness and the TCP challenge (no token), health and metrics."""

from __future__ import annotations

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, PlainTextResponse
from hpcdock import endpoint

from .common import TOKEN, ServiceDep, answer
from .schemas import Health, Ok, Proof

open_router = APIRouter()
router = APIRouter(dependencies=TOKEN)


@open_router.get("/v1/live", response_model=Ok)
def live() -> JSONResponse:
    """Liveness only: says nothing about jobs, engine or configuration."""
    return answer({"ok": True})


@open_router.get("/v1/hello", response_model=Proof)
def hello(
    request: Request,
    service: ServiceDep,
    nonce: str = Query(..., min_length=16, max_length=128, pattern="^[A-Za-z0-9_-]+$"),
) -> JSONResponse:
    """The TCP client's challenge: proves this service holds the token before the client
    sends it (see hpcdock.endpoint.proof), bound to the address this connection reached."""
    server = request.scope.get("server") or ("unix", None)
    return answer({"proof": endpoint.proof(service.token, nonce, endpoint.address_of(server))})


@router.get("/v1/health", response_model=Health)
def health(service: ServiceDep) -> JSONResponse:
    return answer(service.health())


@router.get("/metrics", response_class=PlainTextResponse)
def metrics(service: ServiceDep) -> str:
    return service.metrics_text()
