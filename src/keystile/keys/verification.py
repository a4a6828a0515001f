"""The hot path: from a presented credential to a decision (ARCHITECTURE.md, "The hot path").

One function serves the FastAPI dependency and the verify endpoint, so both give the same answer for the same key.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from sqlalchemy import select

from keystile.keys import format as key_format
from keystile.keys.models import ApiKey
from keystile.net import IPAddress, IPNetwork, in_networks, parse_networks

if TYPE_CHECKING:
    from keystile.runtime import Keystile


class Outcome(StrEnum):
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
    key_hash: str = field(repr=False)
    user_id: int
    name: str
    scopes: frozenset[str]
    ip_networks: tuple[IPNetwork, ...]
    metadata: MappingProxyType[str, Any]
    expires_at: datetime | None
    is_active: bool
    rate_limit: int | None
    rate_limit_window_seconds: int | None
    quota_remaining: int | None

    @classmethod
    def from_row(cls, row: ApiKey) -> KeyRecord:
        return cls(
            id=row.id,
            key_id=row.key_id,
            key_hash=row.key_hash,
            user_id=row.user_id,
            name=row.name,
            scopes=frozenset(row.scopes),
            ip_networks=parse_networks(row.ip_allowlist),
            metadata=MappingProxyType(dict(row.key_metadata)),
            expires_at=row.expires_at,
            is_active=row.is_active,
            rate_limit=row.rate_limit,
            rate_limit_window_seconds=row.rate_limit_window_seconds,
            quota_remaining=row.quota_remaining,
        )


@dataclass(frozen=True, slots=True)
class Verification:
    outcome: Outcome
    key: KeyRecord | None = None
    missing_scope: str | None = None

    @property
    def valid(self) -> bool:
        return self.outcome is Outcome.VALID


_NOT_FOUND = Verification(Outcome.NOT_FOUND)


async def load_record(runtime: Keystile, key_id: str) -> KeyRecord | None:
    async with runtime.session_factory() as session:
        row = await session.scalar(select(ApiKey).where(ApiKey.key_id == key_id))
        return KeyRecord.from_row(row) if row is not None else None


async def verify_key(
    runtime: Keystile,
    presented: str,
    *,
    required_scopes: Collection[str] = (),
    client_ip: IPAddress | None = None,
) -> Verification:
    """Decide whether `presented` may be used now; record the use when it may."""
    parsed = key_format.parse_key(presented, runtime.settings.key_prefix)
    if parsed is None:
        return _NOT_FOUND
    record = await load_record(runtime, parsed.key_id)
    if record is None:
        return _NOT_FOUND
    if not key_format.hashes_match(key_format.hash_key(parsed.raw, runtime.pepper), record.key_hash):
        return _NOT_FOUND
    now = runtime.clock()
    if not record.is_active:
        return Verification(Outcome.REVOKED, record)
    if record.expires_at is not None and record.expires_at <= now:
        return Verification(Outcome.EXPIRED, record)
    if record.ip_networks and (client_ip is None or not in_networks(client_ip, record.ip_networks)):
        return Verification(Outcome.IP_NOT_ALLOWED, record)
    for scope in required_scopes:
        if scope not in record.scopes:
            return Verification(Outcome.INSUFFICIENT_SCOPES, record, missing_scope=scope)
    runtime.usage.record(record.id, now)
    return Verification(Outcome.VALID, record)
