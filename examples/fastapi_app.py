"""A FastAPI app whose routes take a verified API key as a dependency (see examples/__init__.py to run it).

FastAPI apps use `keystile.fastapi` rather than the middleware: the key is a route parameter, scopes are per route,
and the security scheme shows in the OpenAPI document.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import FastAPI

from keystile import Keystile
from keystile.fastapi import APIKeyAuth, KeyRecord, RequireScopes

keystile = Keystile()  # reads KEYSTILE_* settings
app = FastAPI(lifespan=keystile.lifespan)


@app.get("/api/whoami")
async def whoami(key: APIKeyAuth) -> dict[str, Any]:
    return {"key": key.id, "owner": key.user_id, "scopes": sorted(key.scopes)}


@app.post("/api/reports")
async def write_report(key: Annotated[KeyRecord, RequireScopes("reports:write")]) -> dict[str, Any]:
    return {"written_by": key.id}


@app.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}
