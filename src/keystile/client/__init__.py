"""A Python client for a keystile server's HTTP API (docs/CLIENT.md): `KeystileClient` and `AsyncKeystileClient`.

    with KeystileClient("https://keys.example.com", api_key=verifier_key) as keystile:
        result = keystile.verify(presented_key, scopes=["data:read"], ip=client_ip)
        if not result.valid:
            ...  # result.code says why: VerifyCode.REVOKED, VerifyCode.RATE_LIMITED, ...

It talks HTTP through httpx and shares no code with the server.
"""

from __future__ import annotations

from keystile.client.aio import AsyncKeystileClient
from keystile.client.cache import VerifyCache
from keystile.client.errors import (
    AuthenticationError,
    ConflictError,
    KeystileConnectionError,
    KeystileError,
    KeystileTimeoutError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitedError,
    ValidationError,
)
from keystile.client.models import (
    Key,
    KeyChanges,
    KeySettings,
    KeyUsage,
    RateLimit,
    RateLimitState,
    UsageBucket,
    VerifyCode,
    VerifyResult,
)
from keystile.client.sync import KeystileClient

__all__ = [
    "AsyncKeystileClient",
    "AuthenticationError",
    "ConflictError",
    "Key",
    "KeyChanges",
    "KeySettings",
    "KeyUsage",
    "KeystileClient",
    "KeystileConnectionError",
    "KeystileError",
    "KeystileTimeoutError",
    "NotFoundError",
    "PermissionDeniedError",
    "RateLimit",
    "RateLimitState",
    "RateLimitedError",
    "UsageBucket",
    "ValidationError",
    "VerifyCache",
    "VerifyCode",
    "VerifyResult",
]
