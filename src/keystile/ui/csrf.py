"""CSRF tokens: an HMAC of the cookie a form belongs to, so nothing is stored and no other site can compute one.

A signed-in form's token is bound to the session cookie; the sign-in form's to a random pre-session cookie
(`keystile_login`), so a forged sign-in (login CSRF) fails too. Compared in constant time.
"""

from __future__ import annotations

import hashlib
import hmac

FIELD = "csrf_token"
LOGIN_COOKIE = "keystile_login"


def token_for(signing_key: str, cookie_value: str, purpose: str) -> str:
    message = f"keystile-ui-csrf:{purpose}:{cookie_value}".encode()
    return hmac.new(signing_key.encode(), message, hashlib.sha256).hexdigest()


def is_valid(signing_key: str, cookie_value: str | None, purpose: str, presented: object) -> bool:
    if not cookie_value or not isinstance(presented, str) or not presented:
        return False
    return hmac.compare_digest(token_for(signing_key, cookie_value, purpose), presented)
