"""A Litestar guard for per-route scopes, on top of `keystile.asgi.APIKeyMiddleware`.

    from keystile.asgi import APIKeyMiddleware
    from keystile.litestar import require_scopes

    @post("/reports", guards=[require_scopes("data:write")])
    async def write_report(request: Request) -> dict[str, int]:
        return {"written_by": request.state.api_key.id}

    app = APIKeyMiddleware(Litestar([write_report]), keystile)

The middleware verifies the key (401/429/503) and puts it in the request state; the guard only compares scopes. Two
differences from `RequireScopes` in FastAPI follow from that: the request has already spent its rate limit when the
guard refuses it, and the 403 body is Litestar's error shape (`{"status_code": 403, "detail": ...}`, same detail).
For keystile's own body and no spending, give the middleware `scopes=` for that path prefix instead.
"""

from __future__ import annotations

from typing import Any

from litestar.connection import ASGIConnection
from litestar.exceptions import HTTPException, ImproperlyConfiguredException
from litestar.handlers.base import BaseRouteHandler
from litestar.types import Guard

from keystile.asgi import missing_scope
from keystile.keys.records import KeyRecord


def require_scopes(*scopes: str) -> Guard:
    """A guard admitting requests whose verified key holds every one of `scopes`, else 403 naming the first missing."""

    def guard(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
        key = connection.scope.get("state", {}).get("api_key")
        if not isinstance(key, KeyRecord):
            # Refused loudly rather than let through: this route is not behind APIKeyMiddleware's `protect`.
            raise ImproperlyConfiguredException("require_scopes needs keystile.asgi.APIKeyMiddleware on this path")
        for scope in scopes:
            if scope not in key.scopes:
                refusal = missing_scope(scope)
                raise HTTPException(status_code=refusal.status, detail=refusal.detail)

    return guard
