"""A Litestar app whose /api/ routes need an API key, one of them a scope (see examples/__init__.py to run it).

`APIKeyMiddleware` verifies the key and starts and stops keystile with the app; the `require_scopes` guard checks a
route's scopes on the key the middleware verified.
"""

from __future__ import annotations

from typing import Any

from litestar import Litestar, Request, get, post

from keystile import Keystile
from keystile.asgi import APIKeyMiddleware
from keystile.litestar import require_scopes

keystile = Keystile()  # reads KEYSTILE_* settings


@get("/api/whoami")
async def whoami(request: Request[Any, Any, Any]) -> dict[str, Any]:
    key = request.state.api_key  # the verified KeyRecord
    return {"key": key.id, "owner": key.user_id, "scopes": sorted(key.scopes)}


@post("/api/reports", guards=[require_scopes("reports:write")])
async def write_report(request: Request[Any, Any, Any]) -> dict[str, Any]:
    return {"written_by": request.state.api_key.id}


@get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


app = APIKeyMiddleware(Litestar([whoami, write_report, healthz]), keystile, protect=["/api/"])
