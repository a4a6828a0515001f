"""What verification works with and answers: `KeyRecord` (a cached snapshot of a key), `Outcome`, `Verification`.

Plain values with no behaviour beyond building them, so the cache, the verifier and the routes can all import this
module without importing one another. `RECORD_QUERY` sits beside `KeyRecord.from_columns`: the one reads the columns
the other takes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from types import MappingProxyType
from typing import Any, NamedTuple

from sqlalchemy import bindparam, select

from keystile.identities.models import Identity
from keystile.keys.models import ApiKey
from keystile.keys.schemas import readable_metadata_of
from keystile.net import IPNetwork, parse_networks
from keystile.ratelimit.base import Decision
from keystile.ratelimit.policy import RateLimitPolicy
from keystile.users.models import User


class Outcome(StrEnum):
    """The verify API's `code` (README, "Verify, for other services")."""

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
class IdentityRecord:
    """The identity a key belongs to, as of loading the key: its shared limits and what verify answers tell of it."""

    id: int
    external_id: str
    metadata: MappingProxyType[str, Any]
    rate_limit: RateLimitPolicy | None
    has_quota: bool
    rate_limit_bucket: str  # the identity's counter; shares a Redis Cluster hash tag with its keys' counters

    def answer(self) -> dict[str, Any]:
        """As verify answers show it: `{id, external_id, metadata}`."""
        return {"id": self.id, "external_id": self.external_id, "metadata": dict(self.metadata)}


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
    enabled: bool
    rate_limit: RateLimitPolicy | None  # the key's own; None: the deployment default
    quota_holder_id: int | None  # whose balance a use spends; None: no quota
    identity: IdentityRecord | None
    rate_limit_bucket: str  # the key's counter in the rate limiter

    @classmethod
    def from_columns(cls, row: Sequence[Any]) -> KeyRecord:
        """From one row of `RECORD_QUERY`: plain column values, no ORM object (docs/PERFORMANCE.md, "The cold path").

        Unpacked by position: reading the columns by name costs 6 us, unpacking them 0.13 us (of 5 us in all)."""
        (
            pk,
            key_id,
            hash_scheme,
            key_hash,
            user_id,
            owner_is_admin,
            name,
            scopes,
            ip_allowlist,
            metadata,
            expires_at,
            is_active,
            enabled,
            rate_limit_requests,
            rate_limit_window_seconds,
            quota_remaining,
            quota_holder_id,
            identity_id,
            identity_external_id,
            identity_metadata,
            identity_rate_limit_requests,
            identity_rate_limit_window_seconds,
            identity_quota_remaining,
        ) = row
        if metadata:
            metadata = readable_metadata_of(pk, metadata)
        return cls(
            id=pk,
            key_id=key_id,
            hash_scheme=hash_scheme,
            key_digest=bytes.fromhex(key_hash),
            user_id=user_id,
            owner_is_admin=owner_is_admin,
            name=name,
            scopes=frozenset(scopes),
            ip_networks=parse_networks(ip_allowlist) if ip_allowlist else (),
            metadata=MappingProxyType(dict(metadata)) if metadata else _NO_METADATA,
            expires_at=expires_at,
            is_active=is_active,
            enabled=enabled,
            rate_limit=RateLimitPolicy.of(rate_limit_requests, rate_limit_window_seconds),
            quota_holder_id=quota_holder_id or (pk if quota_remaining is not None else None),
            identity=None
            if identity_id is None
            else IdentityRecord(
                id=identity_id,
                external_id=identity_external_id,
                metadata=MappingProxyType(dict(identity_metadata)) if identity_metadata else _NO_METADATA,
                rate_limit=RateLimitPolicy.of(identity_rate_limit_requests, identity_rate_limit_window_seconds),
                has_quota=identity_quota_remaining is not None,
                rate_limit_bucket=f"{{i{identity_id}}}identity",
            ),
            # With an identity, the key's counter and the identity's are passed together in one script call, so on a
            # Redis Cluster they must share a slot: the same hash tag (ratelimit/redis.py).
            rate_limit_bucket=f"key:{pk}" if identity_id is None else f"{{i{identity_id}}}key:{pk}",
        )


_NO_METADATA: MappingProxyType[str, Any] = MappingProxyType({})

_api_keys = ApiKey.__table__.c
_identities = Identity.__table__.c

# What a cache miss reads: the columns a record is built from, the owner's admin flag and the key's identity, by
# key_id. A Core SELECT built once, so SQLAlchemy compiles it once (and asyncpg prepares it once per connection); rows
# come back as tuples.
RECORD_QUERY = (
    select(
        ApiKey.id,
        ApiKey.key_id,
        ApiKey.hash_scheme,
        ApiKey.key_hash,
        ApiKey.user_id,
        User.is_admin,
        ApiKey.name,
        ApiKey.scopes,
        ApiKey.ip_allowlist,
        ApiKey.key_metadata.label("key_metadata"),
        ApiKey.expires_at,
        ApiKey.is_active,
        ApiKey.enabled,
        _api_keys.rate_limit_requests,  # the two columns of the `rate_limit` composite
        _api_keys.rate_limit_window_seconds,
        ApiKey.quota_remaining,
        ApiKey.quota_holder_id,
        Identity.id,
        Identity.external_id,
        Identity.identity_metadata,
        _identities.rate_limit_requests,
        _identities.rate_limit_window_seconds,
        Identity.quota_remaining,
    )
    .join(User, User.id == ApiKey.user_id)
    .outerjoin(Identity, Identity.id == ApiKey.identity_id)
    .where(ApiKey.key_id == bindparam("key_id"))
)


class Verification(NamedTuple):
    """The decision. A NamedTuple: one is built for every request, and it costs what a tuple costs."""

    outcome: Outcome
    key: KeyRecord | None = None
    missing_scope: str | None = None
    ratelimit: Decision | None = None  # the key's own limit (or the deployment default)
    quota_remaining: int | None = None
    identity_ratelimit: Decision | None = None  # the identity's limit, when it has one

    @property
    def binding_ratelimit(self) -> Decision | None:
        """The limit that governs the answer: the one that refused, else the key's, else the identity's."""
        identity = self.identity_ratelimit
        if identity is not None and (self.ratelimit is None or (self.ratelimit.allowed and not identity.allowed)):
            return identity
        return self.ratelimit

    @property
    def valid(self) -> bool:
        return self.outcome is Outcome.VALID
