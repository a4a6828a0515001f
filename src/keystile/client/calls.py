"""Each API call as data: method, path, body, how to read the answer, and whether it may be retried.

The sync and async clients differ only in how they send a `Call`; everything about what is sent and what comes back
is decided here once, so the two cannot drift apart.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Hashable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Generic, TypeVar

from keystile.client.models import Key, KeyUsage, VerifyResult, settings_json

T = TypeVar("T")

VERIFY_PATH = "/v1/keys/verify"
KEYS_PATH = "/keys/"


@dataclass(frozen=True, slots=True)
class Call(Generic[T]):
    """One request and how to read its answer.

    `idempotent`: sending it twice has the effect of sending it once, so a connection failure may be retried.
    `as_verifier`: authenticate with the client's API key when it has one (verify), else with its token.
    `cache_key`: set only on verify; it holds a SHA-256 of the key, never the key itself.
    """

    method: str
    path: str
    parse: Callable[[Any], T]
    params: Mapping[str, str | int] | None = None
    body: Any = field(default=None, repr=False)  # may hold a raw key (verify)
    idempotent: bool = False
    as_verifier: bool = False
    cache_key: Hashable | None = field(default=None, repr=False)


def verify(key: str, scopes: Iterable[str], cost: int, ip: str | None) -> Call[VerifyResult]:
    """Never idempotent: each verify spends rate limit and quota, so a retry could spend twice. A lone string is one
    scope, not a sequence of one-letter scopes."""
    scopes = [scopes] if isinstance(scopes, str) else list(scopes)
    return Call(
        "POST",
        VERIFY_PATH,
        VerifyResult.from_json,
        body={"key": key, "scopes": scopes, "cost": cost, "ip": ip},
        as_verifier=True,
        cache_key=(hashlib.sha256(key.encode()).digest(), frozenset(scopes), cost, ip),
    )


def create_key(name: str, settings: Mapping[str, Any]) -> Call[Key]:
    return Call("POST", KEYS_PATH, Key.from_json, body={"name": name, **settings_json(settings)})


def list_keys(limit: int, offset: int) -> Call[list[Key]]:
    return Call("GET", KEYS_PATH, _keys, params={"limit": limit, "offset": offset}, idempotent=True)


def get_key(key_id: int) -> Call[Key]:
    return Call("GET", _key_path(key_id), Key.from_json, idempotent=True)


def update_key(key_id: int, changes: Mapping[str, Any]) -> Call[Key]:
    """Not retried: `expires_in` is relative to when the server applies it, and each change is audited."""
    return Call("PATCH", _key_path(key_id), Key.from_json, body=settings_json(changes))


def revoke_key(key_id: int) -> Call[Key]:
    """Idempotent on the server: revoking a revoked key changes nothing and answers the same."""
    return Call("POST", f"{_key_path(key_id)}/revoke", Key.from_json, idempotent=True)


def rotate_key(key_id: int, grace_seconds: int) -> Call[Key]:
    """Not retried: a rotation that reached the server makes a retry a 409, and its new key would be lost."""
    return Call("POST", f"{_key_path(key_id)}/rotate", Key.from_json, body={"grace_seconds": grace_seconds})


def key_usage(key_id: int, interval: str | None, since: datetime | None, until: datetime | None) -> Call[KeyUsage]:
    given = {"interval": interval, "since": since, "until": until}
    params = {
        name: value.isoformat() if isinstance(value, datetime) else value
        for name, value in given.items()
        if value is not None
    }
    return Call("GET", f"{_key_path(key_id)}/usage", KeyUsage.from_json, params=params, idempotent=True)


def _key_path(key_id: int) -> str:
    # int(): an id is a number; a string such as "1/revoke" must not become a different path.
    return f"{KEYS_PATH}{int(key_id)}"


def _keys(data: Any) -> list[Key]:
    return [Key.from_json(item) for item in data]
