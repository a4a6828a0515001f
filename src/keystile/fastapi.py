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

from fastapi import HTTPException, Request, Response, Security, status
from fastapi.openapi.models import APIKey, APIKeyIn
from fastapi.security import SecurityScopes
from fastapi.security.base import SecurityBase

from keystile.instance import Keystile, keystile_of
from keystile.keys.records import KeyRecord, Outcome
from keystile.net import IPAddress, client_address
from keystile.ratelimit.base import Decision
from keystile.ratelimit.guard import LimiterClosedError

HEADER_NAME = "X-API-Key"
QUERY_NAME = "api_key"
INVALID_KEY_DETAIL = "Invalid or expired API key"


def client_ip(request: Request) -> IPAddress | None:
    """The client address, believing `X-Forwarded-For` only from `KEYSTILE_TRUSTED_PROXIES`."""
    return _client_ip(keystile_of(request), request)


def _client_ip(keystile: Keystile, request: Request) -> IPAddress | None:
    client = request.scope.get("client")
    peer = client[0] if client else None
    # The header is read only when some proxy is trusted: without one it could not change the answer.
    forwarded_for = request.headers.get("x-forwarded-for") if keystile.trusted_proxies else None
    return client_address(peer, forwarded_for, keystile.trusted_proxies)


def _unauthorized(detail: str) -> HTTPException:
    return HTTPException(status.HTTP_401_UNAUTHORIZED, detail=detail, headers={"WWW-Authenticate": "APIKey"})


def rate_limit_fields(decision: Decision) -> tuple[tuple[bytes, bytes], tuple[bytes, bytes]]:
    """The IETF draft fields (draft-ietf-httpapi-ratelimit-headers): the policy, and where this key stands in it.

    Raw ASGI header pairs, ready to append to a response's `raw_headers`: cheaper than going through
    `response.headers`, which encodes and then searches for an existing field (bench_http).
    """
    return (
        (b"ratelimit-policy", b'"key";q=%d;w=%d' % (decision.limit, decision.window_seconds)),
        (b"ratelimit", b'"key";r=%d;t=%d' % (decision.remaining, decision.reset_seconds)),
    )


def rate_limit_headers(decision: Decision | None) -> dict[str, str]:
    """The same fields as a dict, for responses FastAPI builds (an HTTPException's headers)."""
    if decision is None:
        return {}
    return {name.decode(): value.decode() for name, value in rate_limit_fields(decision)}


async def _refuse_failed_attempt(keystile: Keystile, address: IPAddress | None) -> HTTPException:
    """A 401, or a 429 once this address has failed too often.

    Only failures are counted and only failures are refused, so a valid key from the same address still works:
    an attacker can slow themselves down but cannot lock out a key holder.
    """
    policy = keystile.settings.key_failure_limit
    decision = await keystile.limits.hit(
        f"keyfail:{address}", limit=policy.limit, window_seconds=policy.window_seconds, cost=1, now=keystile.clock()
    )
    if decision is not None and not decision.allowed:
        keystile.metrics.rate_limited.labels("key_failures").inc()
        return HTTPException(
            status.HTTP_429_TOO_MANY_REQUESTS,
            detail="Too many failed API key attempts",
            headers={"Retry-After": str(decision.retry_after)},
        )
    return _unauthorized(INVALID_KEY_DETAIL)


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
        """Verify the request's key and return its record; answer 401, 403, 429 or 503 (README, "Presenting a key")."""
        return await _authenticate(request, response, security_scopes.scopes)


authenticate_api_key = _APIKeyAuthenticator()


async def _authenticate(request: Request, response: Response, required_scopes: list[str]) -> KeyRecord:
    keystile = keystile_of(request)
    accept_query = keystile.settings.accept_query_key
    query_key = request.query_params.get(QUERY_NAME) if request.scope["query_string"] else None
    presented = request.headers.get(HEADER_NAME) or (query_key if accept_query else None)
    if not presented:
        if query_key and not accept_query:
            raise _unauthorized(f"API key required (header {HEADER_NAME}); query parameter keys are disabled")
        where = f"header {HEADER_NAME} or query ?{QUERY_NAME}=" if accept_query else f"header {HEADER_NAME}"
        raise _unauthorized(f"API key required ({where})")

    address = _client_ip(keystile, request)
    try:
        verification = await keystile.verifier.verify(presented, required_scopes=required_scopes, client_ip=address)
        if verification.outcome is Outcome.VALID:
            assert verification.key is not None
            if verification.ratelimit is not None:
                response.raw_headers.extend(rate_limit_fields(verification.ratelimit))
            return verification.key
        headers = rate_limit_headers(verification.ratelimit)
        match verification.outcome:
            case Outcome.INSUFFICIENT_SCOPES:
                detail = f"API key lacks required scope: {verification.missing_scope}"
                raise HTTPException(status.HTTP_403_FORBIDDEN, detail=detail)
            case Outcome.IP_NOT_ALLOWED:
                raise HTTPException(status.HTTP_403_FORBIDDEN, detail="API key not allowed from this address")
            case Outcome.RATE_LIMITED:
                assert verification.ratelimit is not None
                keystile.metrics.rate_limited.labels("rate_limit").inc()
                headers["Retry-After"] = str(verification.ratelimit.retry_after)
                raise HTTPException(
                    status.HTTP_429_TOO_MANY_REQUESTS, detail="API key rate limit exceeded", headers=headers
                )
            case Outcome.QUOTA_EXCEEDED:
                keystile.metrics.rate_limited.labels("quota").inc()
                raise HTTPException(
                    status.HTTP_429_TOO_MANY_REQUESTS, detail="API key quota exhausted", headers=headers
                )
            case _:
                raise await _refuse_failed_attempt(keystile, address)
    except LimiterClosedError:
        raise limiter_unavailable() from None


def limiter_unavailable() -> HTTPException:
    """RATE_LIMIT_FAILURE=closed while the backend is down: refuse rather than serve unlimited."""
    return HTTPException(
        status.HTTP_503_SERVICE_UNAVAILABLE,
        detail="Rate limiting is unavailable and this deployment fails closed",
        headers={"Retry-After": "1"},
    )


APIKeyAuth = Annotated[KeyRecord, Security(authenticate_api_key)]
"""A verified key, any scope. Use as a route parameter: `key: APIKeyAuth`."""


def RequireScopes(*scopes: str) -> KeyRecord:
    """A verified key holding every one of `scopes`, else 403: `key: Annotated[KeyRecord, RequireScopes("a")]`."""
    return Security(authenticate_api_key, scopes=list(scopes))  # type: ignore[no-any-return]


__all__ = ["APIKeyAuth", "KeyRecord", "RequireScopes", "authenticate_api_key", "client_ip"]
