"""The hot path: from a presented credential to a decision (ARCHITECTURE.md, "The hot path").

One function serves the FastAPI dependency and the verify endpoint, so both give the same answer for the same key.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Collection
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, NamedTuple

from sqlalchemy import select

from keystile.keys import format as key_format
from keystile.keys.models import ApiKey
from keystile.net import IPAddress, IPNetwork, in_networks, parse_networks
from keystile.ratelimit.base import Decision

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
    key_digest: bytes = field(repr=False)  # the stored HMAC, decoded once so each check compares raw bytes
    user_id: int
    name: str
    scopes: frozenset[str]
    ip_networks: tuple[IPNetwork, ...]
    metadata: MappingProxyType[str, Any]
    expires_at: datetime | None
    is_active: bool
    policy: tuple[int, int] | None  # the key's own rate limit: (limit, window seconds)
    quota_holder_id: int | None  # whose balance a use spends; None: no quota

    @classmethod
    def from_row(cls, row: ApiKey) -> KeyRecord:
        return cls(
            id=row.id,
            key_id=row.key_id,
            key_digest=bytes.fromhex(row.key_hash),
            user_id=row.user_id,
            name=row.name,
            scopes=frozenset(row.scopes),
            ip_networks=parse_networks(row.ip_allowlist),
            metadata=MappingProxyType(dict(row.key_metadata)),
            expires_at=row.expires_at,
            is_active=row.is_active,
            policy=(row.rate_limit, row.rate_limit_window_seconds)
            if row.rate_limit is not None and row.rate_limit_window_seconds is not None
            else None,
            quota_holder_id=row.quota_key_id or (row.id if row.quota_remaining is not None else None),
        )


class Verification(NamedTuple):
    """The decision. A NamedTuple, as cheap to build as a tuple: one is made for every request."""

    outcome: Outcome
    key: KeyRecord | None = None
    missing_scope: str | None = None
    ratelimit: Decision | None = None
    quota_remaining: int | None = None

    @property
    def valid(self) -> bool:
        return self.outcome is Outcome.VALID


_NOT_FOUND = Verification(Outcome.NOT_FOUND)


async def load_record(runtime: Keystile, key_id: str) -> KeyRecord | None:
    """The key's record from the cache, else from the database (and then cached, known or unknown)."""
    return await runtime.key_cache.get_or_load(key_id, functools.partial(_select_record, runtime))


async def _select_record(runtime: Keystile, key_id: str) -> KeyRecord | None:
    async with runtime.session_factory() as session:
        row = await session.scalar(select(ApiKey).where(ApiKey.key_id == key_id))
    return KeyRecord.from_row(row) if row is not None else None


async def verify_key(
    runtime: Keystile,
    presented: str,
    *,
    required_scopes: Collection[str] = (),
    client_ip: IPAddress | None = None,
    cost: int = 1,
) -> Verification:
    """Decide whether `presented` may be used now, spending `cost` from its rate limit and quota when it may.

    Raises LimiterClosedError when the rate-limit backend is down and RATE_LIMIT_FAILURE is `closed`.
    """
    key_id = key_format.key_id_of(presented, runtime.settings.key_prefix)
    if key_id is None:
        # Counted but not timed: a malformed key costs microseconds and no I/O, and timing it would cost more.
        runtime.metrics.verified(Outcome.NOT_FOUND)
        return _NOT_FOUND
    started = time.perf_counter()
    verification = await _verify(runtime, key_id, presented, required_scopes, client_ip, cost)
    runtime.metrics.verified(verification.outcome, time.perf_counter() - started)
    return verification


async def _verify(
    runtime: Keystile,
    key_id: str,
    presented: str,
    required_scopes: Collection[str],
    client_ip: IPAddress | None,
    cost: int,
) -> Verification:
    record = runtime.key_cache.get(key_id)  # checked here first: a cache hit then awaits nothing at all
    if record is None:
        record = await load_record(runtime, key_id)
        if record is None:
            return _NOT_FOUND
    if not key_format.hashes_match(key_format.key_digest(presented, runtime.pepper), record.key_digest):
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

    decision = None
    policy = record.policy or runtime.default_rate_limit_policy
    if policy is not None:
        limit, window_seconds = policy
        decision = await runtime.limits.hit(
            f"key:{record.id}", limit=limit, window_seconds=window_seconds, cost=cost, now=now
        )
        if decision is not None and not decision.allowed:
            return Verification(Outcome.RATE_LIMITED, record, ratelimit=decision)
    quota_remaining = None
    if record.quota_holder_id is not None:
        quota_remaining = await runtime.quotas.consume(record.quota_holder_id, cost)
        if quota_remaining is None:
            return Verification(Outcome.QUOTA_EXCEEDED, record, ratelimit=decision, quota_remaining=0)
    runtime.usage.record(record.id, now)
    return Verification(Outcome.VALID, record, ratelimit=decision, quota_remaining=quota_remaining)
