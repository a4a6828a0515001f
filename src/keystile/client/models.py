"""What the client returns: frozen dataclasses built from the server's JSON, and `VerifyCode`.

Parsing is lenient in one direction only: fields the server adds later are ignored, and a verify `code` this client
does not know is kept as its text, so an older client keeps working against a newer server. Fields that every answer
has (a key's `id` and `name`, a verification's `valid` and `code`) are required.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any, TypedDict


class VerifyCode(StrEnum):
    """Why a verification came out as it did: the verify API's `code`. A `VerifyResult.code` may also be a plain
    string this enum lacks (a code added to the server later); compare with `==`, which works for both."""

    VALID = "VALID"
    NOT_FOUND = "NOT_FOUND"
    REVOKED = "REVOKED"
    DISABLED = "DISABLED"
    EXPIRED = "EXPIRED"
    INSUFFICIENT_SCOPES = "INSUFFICIENT_SCOPES"
    IP_NOT_ALLOWED = "IP_NOT_ALLOWED"
    RATE_LIMITED = "RATE_LIMITED"
    QUOTA_EXCEEDED = "QUOTA_EXCEEDED"


@dataclass(frozen=True, slots=True)
class RateLimit:
    """A key's rate limit policy: `limit` requests per `window_seconds`."""

    limit: int
    window_seconds: int


@dataclass(frozen=True, slots=True)
class RateLimitState:
    """Where a key stands in its current window, as verify reports it."""

    limit: int
    remaining: int
    reset_seconds: int


@dataclass(frozen=True, slots=True)
class VerifyResult:
    """The answer of `verify`. Only `valid` and `code` are always set: for NOT_FOUND the rest is None."""

    valid: bool
    code: VerifyCode | str
    api_key_id: int | None = None
    owner_id: int | None = None
    name: str | None = None
    scopes: tuple[str, ...] | None = None
    metadata: dict[str, Any] | None = None
    expires_at: datetime | None = None
    ratelimit: RateLimitState | None = None
    quota_remaining: int | None = None
    identity: dict[str, Any] | None = None  # {id, external_id, metadata} of the key's identity

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> VerifyResult:
        ratelimit = data.get("ratelimit")
        return cls(
            valid=bool(data["valid"]),
            code=_code(str(data["code"])),
            api_key_id=data.get("api_key_id"),
            owner_id=data.get("owner_id"),
            name=data.get("name"),
            scopes=_tuple_or_none(data.get("scopes")),
            metadata=data.get("metadata"),
            expires_at=_datetime(data.get("expires_at")),
            ratelimit=RateLimitState(
                limit=ratelimit["limit"], remaining=ratelimit["remaining"], reset_seconds=ratelimit["reset_seconds"]
            )
            if ratelimit
            else None,
            quota_remaining=data.get("quota_remaining"),
            identity=data.get("identity"),
        )


@dataclass(frozen=True, slots=True)
class Key:
    """An API key as `/keys` shows it. `key`, the raw key, is set only on the answers of `create_key` and
    `rotate_key` (keystile stores only its hash) and is left out of `repr()`."""

    id: int
    name: str
    hint: str = ""
    owner_id: int | None = None
    scopes: tuple[str, ...] = ()
    created_at: datetime | None = None
    expires_at: datetime | None = None
    rate_limit: RateLimit | None = None
    quota_remaining: int | None = None
    ip_allowlist: tuple[str, ...] = ()
    metadata: dict[str, Any] = field(default_factory=dict)
    is_active: bool = True
    enabled: bool = True
    identity_id: int | None = None
    last_used_at: datetime | None = None
    use_count: int = 0
    revoked_at: datetime | None = None
    rotated_from: int | None = None
    key: str | None = field(default=None, repr=False)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Key:
        rate_limit = data.get("rate_limit")
        return cls(
            id=data["id"],
            name=data["name"],
            hint=data.get("hint", ""),
            owner_id=data.get("owner_id"),
            scopes=tuple(data.get("scopes") or ()),
            created_at=_datetime(data.get("created_at")),
            expires_at=_datetime(data.get("expires_at")),
            rate_limit=RateLimit(limit=rate_limit["limit"], window_seconds=rate_limit["window_seconds"])
            if rate_limit
            else None,
            quota_remaining=data.get("quota_remaining"),
            ip_allowlist=tuple(data.get("ip_allowlist") or ()),
            metadata=dict(data.get("metadata") or {}),
            is_active=bool(data.get("is_active", True)),
            enabled=bool(data.get("enabled", True)),
            identity_id=data.get("identity_id"),
            last_used_at=_datetime(data.get("last_used_at")),
            use_count=int(data.get("use_count") or 0),
            revoked_at=_datetime(data.get("revoked_at")),
            rotated_from=data.get("rotated_from"),
            key=data.get("key"),
        )


@dataclass(frozen=True, slots=True)
class UsageBucket:
    """The verifications of one key in one interval, by result."""

    start: datetime
    valid: int = 0
    rate_limited: int = 0
    quota_exceeded: int = 0
    rejected: int = 0

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> UsageBucket:
        return cls(
            start=datetime.fromisoformat(data["start"]),
            valid=int(data.get("valid", 0)),
            rate_limited=int(data.get("rate_limited", 0)),
            quota_exceeded=int(data.get("quota_exceeded", 0)),
            rejected=int(data.get("rejected", 0)),
        )


@dataclass(frozen=True, slots=True)
class KeyUsage:
    """`GET /keys/{id}/usage`: buckets of `interval` length, oldest first as the server sends them."""

    interval: str
    buckets: tuple[UsageBucket, ...]

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> KeyUsage:
        return cls(
            interval=str(data["interval"]),
            buckets=tuple(UsageBucket.from_json(bucket) for bucket in data.get("buckets") or ()),
        )


class KeySettings(TypedDict, total=False):
    """What `create_key` accepts besides the name. Leave a field out for the server's default."""

    scopes: Sequence[str]
    expires_at: datetime | None  # timezone-aware
    expires_in: int  # seconds from now; give this or expires_at
    rate_limit: RateLimit | None
    quota: int | None  # total uses; None: unlimited
    ip_allowlist: Sequence[str]
    metadata: Mapping[str, Any]
    quota_refill: Mapping[str, Any] | None  # {"amount": int, "interval": "daily" | "monthly"}
    identity_id: int | None


class KeyChanges(KeySettings, total=False):
    """What `update_key` changes: only the fields given. `None` clears `expires_at`, `rate_limit` and `quota`."""

    name: str
    enabled: bool  # False pauses the key; True resumes it (a revoked key: 409)


def settings_json(settings: Mapping[str, Any]) -> dict[str, Any]:
    """KeySettings or KeyChanges as the JSON body the server reads; keys pass through as given (an unknown one is
    the server's 422)."""
    return {name: _json_value(value) for name, value in settings.items()}


def _json_value(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, RateLimit):
        return {"limit": value.limit, "window_seconds": value.window_seconds}
    if isinstance(value, Mapping):
        return dict(value)
    if isinstance(value, Sequence) and not isinstance(value, str):
        return list(value)
    return value


def _code(text: str) -> VerifyCode | str:
    try:
        return VerifyCode(text)
    except ValueError:
        return text  # a code newer than this client: kept, not a crash


def _datetime(value: Any) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


def _tuple_or_none(value: Any) -> tuple[str, ...] | None:
    return tuple(value) if value is not None else None
