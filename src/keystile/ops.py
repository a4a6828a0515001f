"""Liveness, readiness and metrics."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from keystile.deps import KeystileDep

router = APIRouter(tags=["operations"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", responses={503: {"description": "A dependency is down; the body names it"}})
async def readyz(keystile: KeystileDep) -> JSONResponse:
    down = await keystile.unavailable()
    if down:
        return JSONResponse({"status": "unavailable", "down": down}, status_code=503)
    return JSONResponse({"status": "ok"})


@router.get("/metrics", response_class=Response, summary="Prometheus metrics")
async def metrics(keystile: KeystileDep) -> Response:
    """This process's counts; under `keystile serve --workers N`, the totals over every worker (keystile.metrics)."""
    return Response(keystile.metrics.render(), media_type=CONTENT_TYPE_LATEST)
