"""The hot path: from a presented key to a decision (docs/DESIGN.md, "The verify path").

`Verifier` serves the FastAPI dependency, the verify endpoint and the CLI, so all give the same answer for the same
key. It is built with the few things it uses, each named, rather than reading them off the instance that owns it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from keystile.clock import Clock
from keystile.db import DatabaseIncidents
from keystile.keys import format as key_format
from keystile.keys.cache import KeyCache
from keystile.keys.models import ApiKey
from keystile.keys.quota import QuotaLedger
from keystile.keys.records import KeyRecord, Outcome, Verification
from keystile.metrics import Metrics
from keystile.net import IPAddress, in_networks
from keystile.ratelimit.guard import LimiterGuard
from keystile.ratelimit.policy import RateLimitPolicy
from keystile.usage.recorder import UsageRecorder
from keystile.users.models import User

_NOT_FOUND = Verification(Outcome.NOT_FOUND)


class KeyLoader:
    """Reads one key's record from the database: what the cache calls on a miss or a stale entry."""

    def __init__(self, session_factory: async_sessionmaker[AsyncSession], incidents: DatabaseIncidents) -> None:
        self._session_factory = session_factory
        self._incidents = incidents

    async def __call__(self, key_id: str) -> KeyRecord | None:
        query = select(ApiKey, User.is_admin).join(User, User.id == ApiKey.user_id).where(ApiKey.key_id == key_id)
        try:
            async with self._session_factory() as session:
                found = (await session.execute(query)).first()
        except Exception as error:
            # Reported here because the cache may answer from a stale entry: no request fails, yet the outage is news.
            self._incidents.report(error)
            raise
        if found is None:
            return None
        row, owner_is_admin = found
        return KeyRecord.from_row(row, owner_is_admin=owner_is_admin)


@dataclass(frozen=True, slots=True, kw_only=True)
class Verifier:
    prefix: str
    hashers: Mapping[str, Callable[[str], bytes]]  # by the hash_scheme stored with each key
    cache: KeyCache
    load: KeyLoader
    limits: LimiterGuard
    default_rate_limit: RateLimitPolicy | None
    quotas: QuotaLedger
    usage: UsageRecorder
    metrics: Metrics
    clock: Clock

    async def verify(
        self,
        presented: str,
        *,
        required_scopes: Collection[str] = (),
        client_ip: IPAddress | None = None,
        cost: int = 1,
        owner_id: int | None = None,
    ) -> Verification:
        """Decide whether `presented` may be used now, spending `cost` from its rate limit and quota when it may.

        With `owner_id`, a key of any other owner is NOT_FOUND, exactly like an unknown key, and spends nothing: a
        tenant's verifier answers for that tenant's keys only (README, "Verify").

        Raises LimiterClosedError when the rate-limit backend is down and RATE_LIMIT_FAILURE is `closed`.
        """
        key_id = key_format.key_id_of(presented, self.prefix)
        if key_id is None:
            # Counted but not timed: a malformed key costs microseconds and no I/O, and timing it would cost more.
            self.metrics.verified(Outcome.NOT_FOUND)
            return _NOT_FOUND
        started = time.perf_counter()
        verification = await self._verify(key_id, presented, required_scopes, client_ip, cost, owner_id)
        self.metrics.verified(verification.outcome, time.perf_counter() - started)
        return verification

    async def record(self, key_id: str) -> KeyRecord | None:
        """The key's record from the cache, else from the database (and then cached, known or unknown)."""
        return await self.cache.get_or_load(key_id, self.load)

    async def _verify(
        self,
        key_id: str,
        presented: str,
        required_scopes: Collection[str],
        client_ip: IPAddress | None,
        cost: int,
        owner_id: int | None,
    ) -> Verification:
        record = self.cache.get(key_id)  # checked here first: a cache hit then awaits nothing at all
        if record is None:
            record = await self.record(key_id)
            if record is None:
                return _NOT_FOUND
        if owner_id is not None and record.user_id != owner_id:
            return _NOT_FOUND
        digest = self.hashers.get(record.hash_scheme)
        if digest is None or not key_format.hashes_match(digest(presented), record.key_digest):
            return _NOT_FOUND
        now = self.clock()
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
        policy = record.rate_limit or self.default_rate_limit
        if policy is not None:
            decision = await self.limits.hit(
                f"key:{record.id}", limit=policy.limit, window_seconds=policy.window_seconds, cost=cost, now=now
            )
            if decision is not None and not decision.allowed:
                return Verification(Outcome.RATE_LIMITED, record, ratelimit=decision)
        quota_remaining = None
        if record.quota_holder_id is not None:
            quota_remaining = await self.quotas.consume(record.quota_holder_id, cost)
            if quota_remaining is None:
                # A cost larger than the balance is refused whole; the balance itself is reported as it is.
                balance = self.quotas.balance(record.quota_holder_id)
                return Verification(Outcome.QUOTA_EXCEEDED, record, ratelimit=decision, quota_remaining=balance)
        self.usage.record(record.id, now)
        return Verification(Outcome.VALID, record, ratelimit=decision, quota_remaining=quota_remaining)
