"""The error answers routes share, as OpenAPI declarations: every one a `{"detail": str}` body.

Routers declare these so the published schema says what each route really answers (tests/test_openapi.py holds the
table); `API_KEY_ANSWERS` is also what an app's own routes behind `keystile.fastapi.APIKeyAuth` can answer.
"""

from __future__ import annotations

from typing import Any

Responses = dict[int | str, dict[str, Any]]

DETAIL_BODY = {
    "application/json": {
        "schema": {"type": "object", "properties": {"detail": {"type": "string"}}, "required": ["detail"]}
    }
}
RETRY_AFTER = {"description": "Seconds to wait", "schema": {"type": "integer"}}


def challenge(schemes: str) -> dict[str, Any]:
    """The `WWW-Authenticate` field every 401 carries."""
    return {"WWW-Authenticate": {"description": schemes, "required": True, "schema": {"type": "string"}}}


DATABASE_UNAVAILABLE: Responses = {
    503: {"description": "The database is unavailable", "content": DETAIL_BODY, "headers": {"Retry-After": RETRY_AFTER}}
}

BEARER_ANSWERS: Responses = {
    401: {
        "description": "Missing, invalid or expired bearer token",
        "content": DETAIL_BODY,
        "headers": challenge("`Bearer`"),
    },
    **DATABASE_UNAVAILABLE,
}

ADMIN_ANSWERS: Responses = BEARER_ANSWERS | {403: {"description": "Not an admin", "content": DETAIL_BODY}}

KEY_NOT_FOUND: Responses = {404: {"description": "No such key, or not yours", "content": DETAIL_BODY}}
IDENTITY_NOT_FOUND: Responses = {404: {"description": "No such identity, or not yours", "content": DETAIL_BODY}}

API_KEY_ANSWERS: Responses = {
    401: {"description": "Missing or invalid API key", "content": DETAIL_BODY, "headers": challenge("`APIKey`")},
    403: {"description": "The key lacks a required scope, or is not allowed from this address", "content": DETAIL_BODY},
    429: {
        "description": "Rate limit exceeded or too many failed attempts (with `Retry-After`), or quota exhausted",
        "content": DETAIL_BODY,
        "headers": {"Retry-After": RETRY_AFTER},
    },
    503: {
        "description": "Rate limiting unavailable (RATE_LIMIT_FAILURE=closed), or the database unavailable",
        "content": DETAIL_BODY,
        "headers": {"Retry-After": RETRY_AFTER},
    },
}
