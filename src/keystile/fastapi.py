"""The public dependency surface for FastAPI apps, the lesson's `APIKeyAuth` done properly.

    from keystile import Keystile
    from keystile.fastapi import APIKeyAuth

    keystile = Keystile()                       # reads KEYSTILE_* settings
    app = FastAPI(lifespan=keystile.lifespan)

    @app.get("/data/export")
    async def export_data(key: APIKeyAuth) -> dict:
        return {"owner": key.user_id}

keystile's own `/data/export` is written exactly this way.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import HTTPException, Request, Response, Security
from fastapi.openapi.models import APIKey, APIKeyIn
from fastapi.security import SecurityScopes
from fastapi.security.base import SecurityBase

from keystile.asgi import HEADER_NAME, LIMITER_UNAVAILABLE, Refusal, check_request, client_ip_of, rate_limit_fields
from keystile.instance import keystile_of
from keystile.keys.records import KeyRecord
from keystile.net import IPAddress


async def client_ip(request: Request) -> IPAddress | None:
    """The client address, believing `X-Forwarded-For` only from `KEYSTILE_TRUSTED_PROXIES`. A dependency (async so
    that FastAPI does not hand it to a worker thread)."""
    return client_ip_of(keystile_of(request), request.scope)


def http_exception(refusal: Refusal) -> HTTPException:
    """A refusal as FastAPI raises it; FastAPI's handler answers `{"detail": ...}` with its status and headers."""
    return HTTPException(refusal.status, detail=refusal.detail, headers=refusal.headers)


class _APIKeyAuthenticator(SecurityBase):
    """The key-checking dependency, which is also the OpenAPI security scheme `APIKeyHeader`.

    Being both, FastAPI resolves one dependency per request instead of a scheme object plus a function: on this path
    FastAPI's dependency resolution costs more than verifying the key (docs/PERFORMANCE.md, bench_http).
    """

    def __init__(self) -> None:
        self.model = APIKey(
            **{"in": APIKeyIn.header},
            name=HEADER_NAME,
            description="An API key issued by POST /keys/; `?api_key=` only where the deployment enables it.",
        )
        self.scheme_name = "APIKeyHeader"

    async def __call__(self, request: Request, response: Response, security_scopes: SecurityScopes) -> KeyRecord:
        """Verify the request's key and return its record; answer 401, 403, 429 or 503 (README, "Presenting a key").

        Which key and which answer are decided by `keystile.asgi.check_request`, the check the ASGI middleware makes.
        """
        checked = await check_request(keystile_of(request), request.scope, security_scopes.scopes)
        if isinstance(checked, Refusal):
            raise http_exception(checked)
        response.raw_headers.extend(rate_limit_fields(checked))
        assert checked.key is not None  # a VALID verification always carries its key
        return checked.key


authenticate_api_key = _APIKeyAuthenticator()


def limiter_unavailable() -> HTTPException:
    """RATE_LIMIT_FAILURE=closed while the backend is down: refuse rather than serve unlimited."""
    return http_exception(LIMITER_UNAVAILABLE)


APIKeyAuth = Annotated[KeyRecord, Security(authenticate_api_key)]
"""A verified key, any scope. Use as a route parameter: `key: APIKeyAuth`."""


def RequireScopes(*scopes: str) -> KeyRecord:
    """A verified key holding every one of `scopes`, else 403: `key: Annotated[KeyRecord, RequireScopes("a")]`."""
    return Security(authenticate_api_key, scopes=list(scopes))  # type: ignore[no-any-return]


__all__ = ["APIKeyAuth", "KeyRecord", "RequireScopes", "authenticate_api_key", "client_ip"]
