"""The caller check of the service routes (`/v1/keys/verify`, `/v1/leaks`): an admin's bearer token, or an API key
holding the route's scope. A request carrying an API key is judged by the key, whatever bearer token comes with it
(API.md section 6).

    CALLER = CallerCheck("keys:verify", forbidden="...")   # keys/verify_router.py; leaks/router.py has REPORTER
    caller = await CALLER(request)
    @router.post(..., responses=CALLER.answers)

The routes call it themselves rather than declare it: the verify route skips FastAPI's dependency resolution (the
gateway's hot path), and both keep answering a malformed body before an unknown caller as they always have.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from fastapi import Request

from keystile.asgi import Refusal, check_request, rate_limit_fields
from keystile.deps import bearer_token, user_from_token
from keystile.fastapi import http_exception
from keystile.instance import keystile_of
from keystile.responses import API_KEY_ANSWERS, DETAIL_BODY, RETRY_AFTER, challenge


class Caller(NamedTuple):
    user_id: int  # the caller key's owner, or the admin whose token it is
    is_admin: bool  # an admin's token, or a key an admin owns
    rate_limit_fields: tuple[tuple[bytes, bytes], ...]  # the caller key's own RateLimit fields, for the response


class CallerCheck:
    """The check for one scope; also the OpenAPI answers it can give (`answers`)."""

    def __init__(self, scope: str, *, forbidden: str) -> None:
        self.scope = scope
        self._scopes = (scope,)
        self._no_caller = Refusal(
            401, f"Admin bearer token or API key with scope {scope} required", {"WWW-Authenticate": "Bearer, APIKey"}
        )
        self._not_admin = Refusal(403, f"Admin privileges or scope {scope} required")
        # Each a `{"detail": str}` body.
        self.answers: dict[int | str, dict[str, Any]] = {
            401: {
                "description": "No caller credentials, an invalid caller key or an invalid bearer token",
                "content": DETAIL_BODY,
                "headers": challenge("`APIKey`, `Bearer`"),
            },
            403: {"description": forbidden, "content": DETAIL_BODY},
            429: {
                "description": "The caller key is rate limited, out of quota or failed too often from this address",
                "content": DETAIL_BODY,
                "headers": {"Retry-After": RETRY_AFTER},
            },
            503: API_KEY_ANSWERS[503],
        }

    def __repr__(self) -> str:
        return f"CallerCheck({self.scope!r})"

    async def __call__(self, request: Request) -> Caller:
        """Who is asking; else the 401, 403, 429 or 503 to answer with."""
        keystile = keystile_of(request)
        if request.headers.get("x-api-key"):
            checked = await check_request(keystile, request.scope, self._scopes)
            if isinstance(checked, Refusal):
                raise http_exception(checked)
            key = checked.key
            assert key is not None  # a VALID verification always carries its key
            return Caller(key.user_id, key.owner_is_admin, rate_limit_fields(checked))
        token = await bearer_token(request)
        if not token:
            raise http_exception(self._no_caller)
        async with keystile.session_factory() as session:
            user = await user_from_token(keystile, session, token)
        if not user.is_admin:
            raise http_exception(self._not_admin)
        return Caller(user.id, True, ())
