"""How errors become responses: request validation (422) that never echoes input, and the services' own errors.

FastAPI's default handler includes each error's `input`: a rejected password or key would be written into the
response body, and input that JSON cannot carry (a lone UTF-16 surrogate, an infinite float) would make rendering the
422 itself fail with a 500. This handler keeps FastAPI's shape (`type`, `loc`, `msg`, `ctx`) without the input.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.responses import Response

from keystile.keys.service import InvalidKeySettingsError, KeyNotFoundError, KeyStateConflictError


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


def validation_error(field_name: str, message: str) -> RequestValidationError:
    """A 422 for a body field that is valid on its own but not in context (e.g. an expiry already past)."""
    return RequestValidationError([{"type": "value_error", "loc": ("body", field_name), "msg": message}])


async def _key_not_found(request: Request, exc: Exception) -> Response:
    return JSONResponse(status_code=status.HTTP_404_NOT_FOUND, content={"detail": "API key not found"})


async def _key_state_conflict(request: Request, exc: Exception) -> Response:
    return JSONResponse(status_code=status.HTTP_409_CONFLICT, content={"detail": str(exc)})


async def _invalid_key_settings(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, InvalidKeySettingsError)
    return await request_validation_error(request, validation_error(exc.field_name, str(exc)))


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, request_validation_error)
    app.add_exception_handler(KeyNotFoundError, _key_not_found)
    app.add_exception_handler(KeyStateConflictError, _key_state_conflict)
    app.add_exception_handler(InvalidKeySettingsError, _invalid_key_settings)
