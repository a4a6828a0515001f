"""Request-validation errors (422) that never echo the input back.

FastAPI's default handler includes each error's `input`: a rejected password or key would be written into the
response body, and input that JSON cannot carry (a lone UTF-16 surrogate, an infinite float) would make rendering the
422 itself fail with a 500. This handler keeps FastAPI's shape (`type`, `loc`, `msg`, `ctx`) without the input.
"""

from __future__ import annotations

from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.responses import Response


def _printable(value: Any) -> str | int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    return str(value).encode("utf-8", "backslashreplace").decode("utf-8")


def _without_input(error: dict[str, Any]) -> dict[str, Any]:
    safe: dict[str, Any] = {
        "type": error.get("type", "value_error"),
        "loc": [_printable(part) for part in error.get("loc", ())],
        "msg": _printable(error.get("msg", "")),
    }
    if error.get("ctx"):
        safe["ctx"] = {str(name): _printable(value) for name, value in error["ctx"].items()}
    return safe


async def request_validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    return JSONResponse(status_code=422, content={"detail": [_without_input(error) for error in exc.errors()]})
