"""JWT access tokens (PyJWT): HS256 pinned on decode, and every registered claim we rely on required."""

from __future__ import annotations

import re
from datetime import datetime, timedelta

import jwt

from keystile.db import MAX_ID

ALGORITHM = "HS256"
ISSUER = "keystile"
AUDIENCE = "keystile"
_REQUIRED_CLAIMS = ["sub", "exp", "iat", "iss", "aud"]
_CLOCK_SKEW_SECONDS = 30
_CANONICAL_ID = re.compile(r"[1-9][0-9]{0,9}", re.ASCII)


def issue_access_token(*, user_id: int, signing_key: str, now: datetime, ttl_seconds: int) -> str:
    claims = {
        "sub": str(user_id),
        "iat": now,
        "exp": now + timedelta(seconds=ttl_seconds),
        "iss": ISSUER,
        "aud": AUDIENCE,
    }
    return jwt.encode(claims, signing_key, algorithm=ALGORITHM)


def user_id_from_token(token: str, *, signing_key: str, now: datetime) -> int | None:
    """The user id in a valid token, or None for any token that is forged, expired, malformed or incomplete."""
    try:
        claims = jwt.decode(
            token,
            signing_key,
            algorithms=[ALGORITHM],
            audience=AUDIENCE,
            issuer=ISSUER,
            options={"require": _REQUIRED_CLAIMS, "verify_exp": False, "verify_iat": False},
        )
    except jwt.PyJWTError:
        return None
    # Time claims are checked against the injectable clock rather than PyJWT's wall clock, so tests can move time.
    expires, issued = claims.get("exp"), claims.get("iat")
    if not isinstance(expires, int | float) or not isinstance(issued, int | float):
        return None
    if expires <= now.timestamp() or issued > now.timestamp() + _CLOCK_SKEW_SECONDS:
        return None
    subject = claims["sub"]
    # Only the canonical spelling names a user: str.isdigit() and int() also take "²", "٢", "02" or 31 digits.
    if not isinstance(subject, str) or _CANONICAL_ID.fullmatch(subject) is None or int(subject) > MAX_ID:
        return None
    return int(subject)
