"""`RequestContext`: every HTTP request gets an id, echoed in `X-Request-ID`, and one access line when it is done.

The id is the request's own `X-Request-ID` when that is 1 to 128 visible ASCII characters (so a proxy's or a caller's
id follows the request through), else a new random one: anything else could split a log line or a response header.
It is in `scope["state"]["request_id"]` (`request.state.request_id`) and in `keystile.logs.current_request_id`, so
every record logged while the request is served carries it.

The access line (logger `keystile.access`, INFO) is keystile's rather than uvicorn's because only the app knows the
duration, the request id and which key was presented: `api_key_id` is read from `scope["state"]` after the response,
where `check_request` puts it (`api_key_id`) or `APIKeyMiddleware` puts the verified record (`api_key`). Its path is
redacted before the record is made, so no handler of any embedding app ever sees a key in it.

Pure ASGI and one layer, as it runs on every request: with the access logger disabled (below INFO) the only costs
are the id, a context variable and one appended header.
"""

from __future__ import annotations

import logging
import re
import secrets
import time
from urllib.parse import quote

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from keystile.logs import ACCESS_LOGGER, current_request_id, redact

HEADER = b"x-request-id"
_VALID_ID = re.compile(rb"[\x21-\x7e]{1,128}")

access_logger = logging.getLogger(ACCESS_LOGGER)


def request_id_of(headers: list[tuple[bytes, bytes]]) -> str:
    """The first `X-Request-ID` of the request when it is acceptable, else a new id (32 hex digits)."""
    for name, value in headers:
        if name == HEADER:
            if _VALID_ID.fullmatch(value):
                return value.decode("ascii")
            break
    return secrets.token_hex(16)


class RequestContext:
    """Give each HTTP request an id (taken or generated, and echoed) and, unless `access_log=False`, log one access
    line after its response. Other scopes (lifespan, websocket) pass through untouched."""

    def __init__(self, app: ASGIApp, *, access_log: bool = True) -> None:
        self.app = app
        self.access_log = access_log

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = request_id_of(scope["headers"])
        state = scope.setdefault("state", {})
        state["request_id"] = request_id
        id_field = (HEADER, request_id.encode("ascii"))
        status = 500  # what the server answers when the app fails before starting a response
        started = time.perf_counter()

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), id_field]
            await send(message)

        token = current_request_id.set(request_id)
        try:
            await self.app(scope, receive, send_with_id)
        finally:
            if self.access_log and access_logger.isEnabledFor(logging.INFO):
                _log_access(scope, state, request_id, status, time.perf_counter() - started)
            current_request_id.reset(token)


def _log_access(scope: Scope, state: dict[str, object], request_id: str, status: int, seconds: float) -> None:
    """One line like uvicorn's (`client - "GET /path?query HTTP/1.1" 200 1.2ms`), its parts also as fields."""
    path = quote(scope.get("root_path", "") + scope["path"])  # as uvicorn shows it: a %-encoded key is decoded first
    if scope["query_string"]:
        path = f"{path}?{scope['query_string'].decode('latin-1')}"
    path = redact(path)
    client = scope.get("client")
    api_key_id = state.get("api_key_id")
    if api_key_id is None:
        api_key_id = getattr(state.get("api_key"), "id", None)
    duration_ms = round(seconds * 1000, 3)
    access_logger.info(
        '%s - "%s %s HTTP/%s" %d %.1fms',
        f"{client[0]}:{client[1]}" if client else "-",
        scope["method"],
        path,
        scope.get("http_version", "1.1"),
        status,
        duration_ms,
        extra={
            "request_id": request_id,
            "method": scope["method"],
            "path": path,
            "status": status,
            "duration_ms": duration_ms,
            "api_key_id": api_key_id,
        },
    )
