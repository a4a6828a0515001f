"""The lesson's protected route, written with the public dependency exactly as another app would."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from keystile.fastapi import APIKeyAuth
from keystile.responses import API_KEY_ANSWERS

router = APIRouter(prefix="/data", tags=["data"])


@router.get("/export", summary="Export data (API key, no scope required)", responses=API_KEY_ANSWERS)
async def export_data(key: APIKeyAuth) -> dict[str, Any]:
    return {"owner": key.user_id, "data": []}
