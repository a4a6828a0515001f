"""How errors become responses: request validation (422) that never echoes input, the services' own errors, and an
unreachable database (503 with Retry-After, logged once per outage rather than a traceback per request).

FastAPI's default handler includes each error's `input`: a rejected password or key would be written into the
response body, and input that JSON cannot carry (a lone UTF-16 surrogate, an infinite float) would make rendering the
422 itself fail with a 500. This handler keeps FastAPI's shape (`type`, `loc`, `msg`, `ctx`) without the input.
"""

from __future__ import annotations

from typing import Any

import asyncpg
from fastapi import FastAPI, Request, status
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import SQLAlchemyError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from keystile.identities.service import IdentityConflictError, IdentityNotFoundError
from keystile.instance import keystile_of
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


async def _identity_not_found(request: Request, exc: Exception) -> Response:
    return JSONResponse(status_code=status.HTTP_404_NOT_FOUND, content={"detail": IDENTITY_NOT_FOUND_DETAIL})


IDENTITY_NOT_FOUND_DETAIL = "Identity not found"


async def _key_state_conflict(request: Request, exc: Exception) -> Response:
    return JSONResponse(status_code=status.HTTP_409_CONFLICT, content={"detail": str(exc)})


async def _invalid_key_settings(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, InvalidKeySettingsError)
    return await request_validation_error(request, validation_error(exc.field_name, str(exc)))


async def _http_error(request: Request, exc: Exception) -> Response:
    """FastAPI answers a body it cannot decode with a bare 400 whose cause is the decoder's error: invalid UTF-8, a
    number of more than 4300 digits (Python's int limit), nesting deeper than the parser's recursion. Those are bad
    input like any other, so they get the 422 every other validation error gets."""
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code == status.HTTP_400_BAD_REQUEST and isinstance(exc.__cause__, ValueError | RecursionError):
        error = {"type": "json_invalid", "loc": ["body"], "msg": _UNDECODABLE_BODY}
        return JSONResponse(status_code=422, content={"detail": [error]})
    return await http_exception_handler(request, exc)


_UNDECODABLE_BODY = "The body is not valid UTF-8 JSON (or nests too deep, or holds a number too long to read)"

DATABASE_UNAVAILABLE_DETAIL = "Database unavailable"
DATABASE_RETRY_AFTER_SECONDS = 5
# Where an unreachable database surfaces: SQLAlchemy's wrappers, OSError from a refused or timed-out connect, and
# asyncpg's own errors when connecting to a server that is starting or stopping (raised unwrapped).
_DATABASE_ERRORS: tuple[type[Exception], ...] = (SQLAlchemyError, OSError, asyncpg.PostgresError)


async def _database_error(request: Request, exc: Exception) -> Response:
    """A request that needs the database while it is unreachable: an uncached key, JWT routes, key management.

    Any other error of these types is a bug, and goes on to be the 500 (with its traceback) it always was.
    """
    if not keystile_of(request).database_incidents.report(exc):
        raise exc
    return JSONResponse(
        status_code=status.HTTP_503_SERVICE_UNAVAILABLE,
        content={"detail": DATABASE_UNAVAILABLE_DETAIL},
        headers={"Retry-After": str(DATABASE_RETRY_AFTER_SECONDS)},
    )


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, request_validation_error)
    app.add_exception_handler(KeyNotFoundError, _key_not_found)
    app.add_exception_handler(KeyStateConflictError, _key_state_conflict)
    app.add_exception_handler(IdentityNotFoundError, _identity_not_found)
    app.add_exception_handler(IdentityConflictError, _key_state_conflict)
    app.add_exception_handler(InvalidKeySettingsError, _invalid_key_settings)
    for database_error in _DATABASE_ERRORS:
        app.add_exception_handler(database_error, _database_error)
