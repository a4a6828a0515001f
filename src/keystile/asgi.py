"""keystile for any ASGI app (Starlette, Litestar, ...): the one request check, and a middleware that applies it.

    from keystile import Keystile
    from keystile.asgi import APIKeyMiddleware

    keystile = Keystile()                       # reads KEYSTILE_* settings
    app = APIKeyMiddleware(Starlette(routes=routes), keystile, protect=["/api/"])

    async def export(request):                  # a route under /api/
        key = request.state.api_key             # the verified KeyRecord
        return JSONResponse({"owner": key.user_id})

`check_request` is the only place that reads a request's key and decides a refusal (status, detail, headers). The
FastAPI dependency (`keystile.fastapi`) raises that refusal as an HTTPException and FastAPI renders it as
`JSONResponse({"detail": ...})`; the middleware renders the same refusal with the same JSONResponse. So the two
answer every request alike and cannot drift apart.
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from typing import Any, NamedTuple

from starlette.datastructures import QueryParams
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from keystile.db import is_database_unavailable
from keystile.errors import DATABASE_RETRY_AFTER_SECONDS, DATABASE_UNAVAILABLE_DETAIL
from keystile.instance import Keystile
from keystile.keys.records import Outcome, Verification
from keystile.net import IPAddress, client_address
from keystile.ratelimit.guard import LimiterClosedError

HEADER_NAME = "X-API-Key"
QUERY_NAME = "api_key"
INVALID_KEY_DETAIL = "Invalid or expired API key"

_HEADER_FIELD = HEADER_NAME.lower().encode()
_ASK_FOR_A_KEY = {"WWW-Authenticate": "APIKey"}
# Set on a lifespan scope by the middleware that runs an instance, so a second middleware with the same instance
# (one per protected prefix) does not start it again.
_RUNNING = "keystile.running"

logger = logging.getLogger(__name__)

AnyASGIApp = Callable[[Any, Any, Any], Awaitable[None]]
"""An ASGI app however its framework types it: Starlette's and Litestar's ASGI types do not accept each other."""


class Refusal(NamedTuple):
    """How a request is turned away: the status, the JSON body's `detail`, and the response's extra headers."""

    status: int
    detail: str
    headers: Mapping[str, str] | None = None


LIMITER_UNAVAILABLE = Refusal(
    503, "Rate limiting is unavailable and this deployment fails closed", {"Retry-After": "1"}
)
"""RATE_LIMIT_FAILURE=closed while the backend is down: refuse rather than serve unlimited."""

DATABASE_UNAVAILABLE = Refusal(503, DATABASE_UNAVAILABLE_DETAIL, {"Retry-After": str(DATABASE_RETRY_AFTER_SECONDS)})
"""A key the cache cannot answer for while the database is down (an embedding app may not install keystile's error
handlers, so the refusal is made here rather than left to a handler)."""


def rate_limit_fields(verification: Verification) -> tuple[tuple[bytes, bytes], ...]:
    """The IETF draft fields (draft-ietf-httpapi-ratelimit-headers): each policy the key passed (its own, then its
    identity's, API.md section 8), and where the key stands in it; none when no limit applies.

    Raw ASGI header pairs, ready to append to a response's headers: cheaper than going through
    `response.headers`, which encodes and then searches for an existing field (bench_http).
    """
    decision, identity = verification.ratelimit, verification.identity_ratelimit
    if identity is None:
        if decision is None:
            return ()
        return (
            (b"ratelimit-policy", b'"key";q=%d;w=%d' % (decision.limit, decision.window_seconds)),
            (b"ratelimit", b'"key";r=%d;t=%d' % (decision.remaining, decision.reset_seconds)),
        )
    named = [(b"identity", identity)] if decision is None else [(b"key", decision), (b"identity", identity)]
    return (
        (b"ratelimit-policy", b", ".join(b'"%s";q=%d;w=%d' % (n, d.limit, d.window_seconds) for n, d in named)),
        (b"ratelimit", b", ".join(b'"%s";r=%d;t=%d' % (n, d.remaining, d.reset_seconds) for n, d in named)),
    )


def rate_limit_headers(verification: Verification) -> dict[str, str]:
    """The same fields as a dict, for the headers of a refusal."""
    return {name.decode(): value.decode() for name, value in rate_limit_fields(verification)}


def _header(scope: Scope, field: bytes) -> str | None:
    """The first value of header `field` (lower case, as ASGI servers give names), like Starlette's `headers.get`."""
    headers: list[tuple[bytes, bytes]] = scope["headers"]
    for name, value in headers:
        if name == field:
            return value.decode("latin-1")
    return None


def client_ip_of(keystile: Keystile, scope: Scope) -> IPAddress | None:
    """The client address, believing `X-Forwarded-For` only from `KEYSTILE_TRUSTED_PROXIES`."""
    client = scope.get("client")
    peer = client[0] if client else None
    # The header is read only when some proxy is trusted: without one it could not change the answer.
    forwarded_for = _header(scope, b"x-forwarded-for") if keystile.trusted_proxies else None
    return client_address(peer, forwarded_for, keystile.trusted_proxies)


async def check_request(
    keystile: Keystile, scope: Scope, required_scopes: Collection[str] = ()
) -> Verification | Refusal:
    """Verify the key an HTTP request presents: its VALID Verification (`.key`, `.ratelimit`), or the Refusal to
    answer with (401, 403, 429 or 503; README, "Presenting a key").

    The key comes from the `X-API-Key` header, or from `?api_key=` only where KEYSTILE_ACCEPT_QUERY_KEY allows it.
    A VALID Verification is returned as the verifier built it, so a request that passes costs no extra object.
    """
    presented = _header(scope, _HEADER_FIELD)
    if not presented:
        # The query string is parsed only when the header is missing: most requests never pay for it.
        query_key = QueryParams(scope["query_string"]).get(QUERY_NAME) if scope["query_string"] else None
        accept_query = keystile.settings.accept_query_key
        presented = query_key if accept_query else None
        if not presented:
            return _missing_key(query_key, accept_query=accept_query)

    address = client_ip_of(keystile, scope)
    try:
        verification = await keystile.verifier.verify(presented, required_scopes=required_scopes, client_ip=address)
        if verification.key is not None:  # the access line's api_key_id, refused known keys too
            scope.setdefault("state", {})["api_key_id"] = verification.key.id
        if verification.outcome is Outcome.VALID:
            return verification
        return await _refusal(keystile, verification, address)
    except LimiterClosedError:
        return LIMITER_UNAVAILABLE
    except Exception as error:
        if not is_database_unavailable(error):
            raise
        return DATABASE_UNAVAILABLE


def _missing_key(query_key: str | None, *, accept_query: bool) -> Refusal:
    if query_key and not accept_query:
        detail = f"API key required (header {HEADER_NAME}); query parameter keys are disabled"
    elif accept_query:
        detail = f"API key required (header {HEADER_NAME} or query ?{QUERY_NAME}=)"
    else:
        detail = f"API key required (header {HEADER_NAME})"
    return Refusal(401, detail, _ASK_FOR_A_KEY)


async def _refusal(keystile: Keystile, verification: Verification, address: IPAddress | None) -> Refusal:
    """The answer to a key that did not pass. Raises LimiterClosedError like the verifier."""
    match verification.outcome:
        case Outcome.INSUFFICIENT_SCOPES:
            assert verification.missing_scope is not None
            return missing_scope(verification.missing_scope)
        case Outcome.IP_NOT_ALLOWED:
            return Refusal(403, "API key not allowed from this address")
        case Outcome.RATE_LIMITED:
            refused_by = verification.binding_ratelimit
            assert refused_by is not None
            keystile.metrics.rate_limited.labels("rate_limit").inc()
            headers = rate_limit_headers(verification)
            headers["Retry-After"] = str(refused_by.retry_after)
            return Refusal(429, "API key rate limit exceeded", headers)
        case Outcome.QUOTA_EXCEEDED:
            keystile.metrics.rate_limited.labels("quota").inc()
            return Refusal(429, "API key quota exhausted", rate_limit_headers(verification))
        case _:
            return await _failed_attempt(keystile, address)


def missing_scope(scope: str) -> Refusal:
    """403 naming the first required scope the key lacks (also the answer of `keystile.litestar.require_scopes`)."""
    return Refusal(403, f"API key lacks required scope: {scope}")


async def _failed_attempt(keystile: Keystile, address: IPAddress | None) -> Refusal:
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
        return Refusal(429, "Too many failed API key attempts", {"Retry-After": str(decision.retry_after)})
    return Refusal(401, INVALID_KEY_DETAIL, _ASK_FOR_A_KEY)


def refusal_response(refusal: Refusal) -> JSONResponse:
    """The response FastAPI's own handler makes of the same refusal raised as an HTTPException."""
    return JSONResponse({"detail": refusal.detail}, refusal.status, headers=refusal.headers)


class APIKeyMiddleware:
    """Verify the API key of every HTTP request whose path starts with one of `protect` (default: all of them).

    A verified key is in `scope["state"]["api_key"]` (Starlette and Litestar: `request.state.api_key`), the same
    KeyRecord the FastAPI dependency returns, and the response carries its RateLimit fields. Every other request is
    answered 401/403/429/503 exactly as `keystile.fastapi` answers it, and never reaches the app. Each request needs
    every one of `scopes`. For other scopes under another prefix, wrap again with the same instance (started once);
    the prefixes must not overlap, or a request under both is verified, and counted, twice.

    Prefixes are matched as plain string prefixes of the path: "/api" covers "/apiary" too, "/api/" does not.
    A websocket under a protected prefix is checked the same way before the app sees it; a refused one is closed
    with code 1008 (policy violation) and the refusal's detail as the reason.

    Wrapping the app is all it takes: the middleware starts `keystile` on the ASGI lifespan startup, before the app's
    own startup, and stops it after the app's shutdown (buffered usage written), also for apps without lifespan.
    """

    def __init__(
        self,
        app: AnyASGIApp,
        keystile: Keystile,
        *,
        protect: str | Sequence[str] = ("/",),
        scopes: str | Collection[str] = (),
    ) -> None:
        self.app: ASGIApp = app
        self.keystile = keystile
        self.protect = (protect,) if isinstance(protect, str) else tuple(protect)
        self.scopes = (scopes,) if isinstance(scopes, str) else tuple(scopes)
        for prefix in self.protect:
            if not prefix.startswith("/"):
                raise ValueError(f"protect prefixes are paths starting with '/', not {prefix!r}: it would match none")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith(self.protect):
            await self._guard(scope, receive, send)
        elif scope["type"] == "websocket" and scope["path"].startswith(self.protect):
            await self._guard_websocket(scope, receive, send)
        elif scope["type"] == "lifespan":
            await self._lifespan(scope, receive, send)
        else:
            await self.app(scope, receive, send)

    async def _guard(self, scope: Scope, receive: Receive, send: Send) -> None:
        checked = await check_request(self.keystile, scope, self.scopes)
        if isinstance(checked, Refusal):
            await refusal_response(checked)(scope, receive, send)
            return
        scope.setdefault("state", {})["api_key"] = checked.key
        fields = rate_limit_fields(checked)
        if not fields:
            await self.app(scope, receive, send)
            return

        async def send_with_rate_limit(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), *fields]
            await send(message)

        await self.app(scope, receive, send_with_rate_limit)

    async def _guard_websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        checked = await check_request(self.keystile, scope, self.scopes)
        if isinstance(checked, Refusal):
            await receive()  # websocket.connect
            await send({"type": "websocket.close", "code": 1008, "reason": checked.detail})
            return
        scope.setdefault("state", {})["api_key"] = checked.key
        await self.app(scope, receive, send)

    async def _lifespan(self, scope: Scope, receive: Receive, send: Send) -> None:
        running = scope.setdefault(_RUNNING, set())
        if id(self.keystile) in running:  # an outer middleware runs this instance
            await self.app(scope, receive, send)
            return
        running.add(id(self.keystile))
        await _Lifespan(self.app, self.keystile).run(scope, receive, send)


class _Lifespan:
    """One ASGI lifespan of the wrapped app with keystile's around it.

    keystile starts before the app's startup (so the app's startup can use it) and stops after the app's shutdown,
    before the server hears "shutdown complete": the server may end the process then, and buffered usage and quota
    leases must be written first. An app that does not speak lifespan (it raises or returns before answering startup,
    as uvicorn's "auto" mode judges it) gets keystile's lifespan alone.
    """

    def __init__(self, app: ASGIApp, keystile: Keystile) -> None:
        self.app = app
        self.keystile = keystile
        self.keystile_running = False
        self.app_answered_startup = False

    async def run(self, scope: Scope, receive: Receive, send: Send) -> None:
        startup: Message | None = await receive()  # the first lifespan message is always startup
        try:
            await self.keystile.__aenter__()
        except Exception:
            await send({"type": "lifespan.startup.failed", "message": traceback.format_exc()})
            raise
        self.keystile_running = True

        async def app_receive() -> Message:
            nonlocal startup
            if startup is not None:
                message, startup = startup, None
                return message
            return await receive()

        async def app_send(message: Message) -> None:
            kind = message["type"]
            if kind.startswith("lifespan.startup."):
                self.app_answered_startup = True
                if kind == "lifespan.startup.failed":
                    await self._stop()
            elif kind == "lifespan.shutdown.complete" and (failure := await self._stop()) is not None:
                message = {"type": "lifespan.shutdown.failed", "message": failure}
            elif kind == "lifespan.shutdown.failed":
                await self._stop()
            await send(message)

        try:
            try:
                await self.app(scope, app_receive, app_send)
            except Exception:
                if self.app_answered_startup:
                    raise
                logger.info("the wrapped app does not support the ASGI lifespan; keystile starts and stops alone")
            if not self.app_answered_startup:
                await self._alone(receive, send)
        finally:
            await self._stop()  # whatever happened: a no-op if keystile already stopped

    async def _alone(self, receive: Receive, send: Send) -> None:
        await send({"type": "lifespan.startup.complete"})
        while (await receive())["type"] != "lifespan.shutdown":
            pass
        failure = await self._stop()
        if failure is None:
            await send({"type": "lifespan.shutdown.complete"})
        else:
            await send({"type": "lifespan.shutdown.failed", "message": failure})

    async def _stop(self) -> str | None:
        """Stop keystile if it runs; the traceback when stopping failed."""
        if not self.keystile_running:
            return None
        self.keystile_running = False
        try:
            await self.keystile.__aexit__(None, None, None)
        except Exception:
            logger.exception("keystile did not stop cleanly")
            return traceback.format_exc()
        return None
