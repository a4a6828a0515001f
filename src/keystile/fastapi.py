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

from fastapi import HTTPException, Request, Security, status
from fastapi.security import APIKeyHeader, SecurityScopes

from keystile.keys.verification import KeyRecord, Outcome, verify_key
from keystile.net import IPAddress, client_address
from keystile.runtime import runtime_of

HEADER_NAME = "X-API-Key"
QUERY_NAME = "api_key"
INVALID_KEY_DETAIL = "Invalid or expired API key"

api_key_header = APIKeyHeader(
    name=HEADER_NAME,
    auto_error=False,
    description="An API key issued by POST /keys/. `?api_key=` is accepted only when the deployment enables it.",
)


def client_ip(request: Request) -> IPAddress | None:
    """The client address, believing `X-Forwarded-For` only from `KEYSTILE_TRUSTED_PROXIES`."""
    peer = request.client.host if request.client else None
    return client_address(peer, request.headers.get("x-forwarded-for"), runtime_of(request).trusted_proxies)


def _unauthorized(detail: str) -> HTTPException:
    return HTTPException(status.HTTP_401_UNAUTHORIZED, detail=detail, headers={"WWW-Authenticate": "APIKey"})


async def authenticate_api_key(
    request: Request,
    security_scopes: SecurityScopes,
    header_key: Annotated[str | None, Security(api_key_header)],
) -> KeyRecord:
    """Verify the request's key and return its record; answer 401, 403 or 429 as API.md section 2 says."""
    runtime = runtime_of(request)
    accept_query = runtime.settings.accept_query_key
    query_key = request.query_params.get(QUERY_NAME)
    presented = header_key or (query_key if accept_query else None)
    if not presented:
        if query_key and not accept_query:
            raise _unauthorized(f"API key required (header {HEADER_NAME}); query parameter keys are disabled")
        where = f"header {HEADER_NAME} or query ?{QUERY_NAME}=" if accept_query else f"header {HEADER_NAME}"
        raise _unauthorized(f"API key required ({where})")

    verification = await verify_key(
        runtime, presented, required_scopes=security_scopes.scopes, client_ip=client_ip(request)
    )
    match verification.outcome:
        case Outcome.VALID:
            assert verification.key is not None
            return verification.key
        case Outcome.INSUFFICIENT_SCOPES:
            raise HTTPException(
                status.HTTP_403_FORBIDDEN,
                detail=f"API key lacks required scope: {verification.missing_scope}",
            )
        case Outcome.IP_NOT_ALLOWED:
            raise HTTPException(status.HTTP_403_FORBIDDEN, detail="API key not allowed from this address")
        case _:
            raise _unauthorized(INVALID_KEY_DETAIL)


APIKeyAuth = Annotated[KeyRecord, Security(authenticate_api_key)]
"""A verified key, any scope. Use as a route parameter: `key: APIKeyAuth`."""


def RequireScopes(*scopes: str) -> KeyRecord:
    """A verified key holding every one of `scopes`, else 403: `key: Annotated[KeyRecord, RequireScopes("a")]`."""
    return Security(authenticate_api_key, scopes=list(scopes))  # type: ignore[no-any-return]


__all__ = ["APIKeyAuth", "KeyRecord", "RequireScopes", "authenticate_api_key", "client_ip"]
