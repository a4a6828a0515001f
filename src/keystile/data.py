"""The lesson's protected route, written with the public dependency exactly as another app would."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from keystile.fastapi import APIKeyAuth

router = APIRouter(prefix="/data", tags=["data"])


@router.get(
    "/export",
    summary="Export data (API key, no scope required)",
    responses={
        401: {"description": "Missing or invalid API key"},
        403: {"description": "Address not allowed"},
    },
)
async def export_data(key: APIKeyAuth) -> dict[str, Any]:
    return {"owner": key.user_id, "data": []}
