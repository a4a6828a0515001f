"""A Starlette app whose /api/ routes need an API key (see examples/__init__.py to run it).

`APIKeyMiddleware` verifies the key before the app sees the request and starts and stops keystile with the app.
"""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from keystile import Keystile
from keystile.asgi import APIKeyMiddleware

keystile = Keystile()  # reads KEYSTILE_* settings


async def whoami(request: Request) -> JSONResponse:
    key = request.state.api_key  # the verified KeyRecord
    return JSONResponse({"key": key.id, "owner": key.user_id, "scopes": sorted(key.scopes)})


async def healthz(request: Request) -> JSONResponse:
    return JSONResponse({"status": "ok"})


routes = [Route("/api/whoami", whoami), Route("/healthz", healthz)]
app = APIKeyMiddleware(Starlette(routes=routes), keystile, protect=["/api/"])
