"""A pure ASGI guard in front of the whole app: what no request may be, and what every response carries.

- A header block over 16 KiB or over 100 fields: 431 (RFC 6585 section 5), before the app sees it.
- A repeated `X-API-Key` or `Authorization` header: 400. Which copy counts would otherwise depend on who reads it:
  keystile takes the first, a proxy in front may take the last.
- A request body over 64 KiB: 413, declared (`Content-Length`) or streamed, before anything reads it all.
- Every response: `X-Content-Type-Options: nosniff`, so no browser guesses a JSON body to be a page.

One layer for all of it: each middleware layer costs every request a call and a closure.
"""

from __future__ import annotations

import json

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

MAX_BODY_BYTES = 64 * 1024
MAX_HEADER_BYTES = 16 * 1024
MAX_HEADER_FIELDS = 100
_BODY_TOO_LARGE = "Request body too large (limit 64 KiB)"
_HEADERS_TOO_LARGE = "Request header fields too large (limit 16 KiB and 100 fields)"
_SINGLE_HEADERS = {b"x-api-key": "X-API-Key", b"authorization": "Authorization"}
_NOSNIFF = (b"x-content-type-options", b"nosniff")


class _BodyTooLargeError(HTTPException):
    """Raised from `receive()` for a streamed body: an HTTPException, so FastAPI's body parsing passes it on as a 413
    instead of wrapping it in a 400, and the middleware still answers 413 for apps that let it propagate."""

    def __init__(self) -> None:
        super().__init__(413, detail=_BODY_TOO_LARGE)


class RequestLimits:
    def __init__(self, app: ASGIApp, max_bytes: int = MAX_BODY_BYTES) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        refusal = self._refusal(scope)
        if refusal is not None:
            await _answer(send, *refusal)
            return
        received = 0
        response_started = False

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise _BodyTooLargeError
            return message

        async def marking_send(message: Message) -> None:
            nonlocal response_started
            if message["type"] == "http.response.start":
                response_started = True
                message["headers"] = [*message.get("headers", ()), _NOSNIFF]
            await send(message)

        try:
            await self.app(scope, limited_receive, marking_send)
        except _BodyTooLargeError:
            if not response_started:
                await _answer(send, 413, _BODY_TOO_LARGE)

    def _refusal(self, scope: Scope) -> tuple[int, str] | None:
        """The status and detail this request is refused with before the app sees it, or None."""
        headers = scope["headers"]
        if len(headers) > MAX_HEADER_FIELDS:
            return 431, _HEADERS_TOO_LARGE
        size, seen, repeated, declared_length = 0, set(), None, None
        for name, value in headers:
            size += len(name) + len(value)
            if name in _SINGLE_HEADERS:
                if name in seen:
                    repeated = _SINGLE_HEADERS[name]
                seen.add(name)
            elif name == b"content-length":
                declared_length = value
        if size > MAX_HEADER_BYTES:
            return 431, _HEADERS_TOO_LARGE
        if repeated is not None:
            return 400, f"Repeated {repeated} header"
        if declared_length is not None and (not declared_length.isdigit() or int(declared_length) > self.max_bytes):
            return 413, _BODY_TOO_LARGE
        return None


async def _answer(send: Send, status: int, detail: str) -> None:
    body = json.dumps({"detail": detail}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), _NOSNIFF]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
