"""What verification works with and answers: `KeyRecord` (a cached snapshot of a key), `Outcome`, `Verification`.

Plain values with no behaviour beyond building them, so the cache, the verifier and the routes can all import this
module without importing one another.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from types import MappingProxyType
from typing import Any, NamedTuple

from keystile.keys.models import ApiKey
from keystile.keys.schemas import readable_metadata
from keystile.net import IPNetwork, parse_networks
from keystile.ratelimit.base import Decision
from keystile.ratelimit.policy import RateLimitPolicy


class Outcome(StrEnum):
    """The verify API's `code` (README, "Verify, for other services")."""

    VALID = "VALID"
    NOT_FOUND = "NOT_FOUND"
    REVOKED = "REVOKED"
    EXPIRED = "EXPIRED"
    INSUFFICIENT_SCOPES = "INSUFFICIENT_SCOPES"
    IP_NOT_ALLOWED = "IP_NOT_ALLOWED"
    RATE_LIMITED = "RATE_LIMITED"
    QUOTA_EXCEEDED = "QUOTA_EXCEEDED"


@dataclass(frozen=True, slots=True)
class KeyRecord:
    """An immutable snapshot of a key row: what verification needs, safe to cache and share between requests."""

    id: int
    key_id: str
    hash_scheme: str
    key_digest: bytes = field(repr=False)  # the stored HMAC, decoded once so each check compares raw bytes
    user_id: int
    owner_is_admin: bool  # as of loading: a change of role reaches cached records within the cache TTL
    name: str
    scopes: frozenset[str]
    ip_networks: tuple[IPNetwork, ...]
    metadata: MappingProxyType[str, Any]
    expires_at: datetime | None
    is_active: bool
    rate_limit: RateLimitPolicy | None  # the key's own; None: the deployment default
    quota_holder_id: int | None  # whose balance a use spends; None: no quota

    @classmethod
    def from_row(cls, row: ApiKey, *, owner_is_admin: bool) -> KeyRecord:
        return cls(
            id=row.id,
            key_id=row.key_id,
            hash_scheme=row.hash_scheme,
            key_digest=bytes.fromhex(row.key_hash),
            user_id=row.user_id,
            owner_is_admin=owner_is_admin,
            name=row.name,
            scopes=frozenset(row.scopes),
            ip_networks=parse_networks(row.ip_allowlist),
            metadata=MappingProxyType(dict(readable_metadata(row))),
            expires_at=row.expires_at,
            is_active=row.is_active,
            rate_limit=row.rate_limit,
            quota_holder_id=row.quota_holder_id or (row.id if row.quota_remaining is not None else None),
        )


class Verification(NamedTuple):
    """The decision. A NamedTuple: one is built for every request, and it costs what a tuple costs."""

    outcome: Outcome
    key: KeyRecord | None = None
    missing_scope: str | None = None
    ratelimit: Decision | None = None
    quota_remaining: int | None = None

    @property
    def valid(self) -> bool:
        return self.outcome is Outcome.VALID
