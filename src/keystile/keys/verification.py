"""The hot path: from a presented key to a decision (docs/DESIGN.md, "The verify path").

`Verifier` serves the FastAPI dependency, the verify endpoint and the CLI, so all give the same answer for the same
key. It is built with the few things it uses, each named, rather than reading them off the instance that owns it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from datetime import datetime

from keystile.clock import Clock
from keystile.keys import format as key_format
from keystile.keys.cache import KeyCache
from keystile.keys.key_ids import KnownKeyIds
from keystile.keys.loader import KeyLoader
from keystile.keys.quota import QuotaLedger
from keystile.keys.records import IdentityRecord, KeyRecord, Outcome, Verification
from keystile.metrics import Metrics
from keystile.net import IPAddress, in_networks
from keystile.ratelimit.base import Counter, Decision
from keystile.ratelimit.guard import LimiterGuard
from keystile.ratelimit.policy import RateLimitPolicy
from keystile.usage.recorder import UsageRecorder

_NOT_FOUND = Verification(Outcome.NOT_FOUND)


@dataclass(frozen=True, slots=True, kw_only=True)
class Verifier:
    prefix: str
    hashers: Mapping[str, Callable[[str], bytes]]  # by the hash_scheme stored with each key
    cache: KeyCache
    load: KeyLoader
    key_ids: KnownKeyIds
    limits: LimiterGuard
    default_rate_limit: RateLimitPolicy | None
    quotas: QuotaLedger  # keys' balances
    identity_quotas: QuotaLedger  # identities' balances
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
            # A made-up key_id stops here, without the database, when the key_id index can tell (keys/key_ids.py).
            key_ids = self.key_ids
            if key_ids.index is not None and await key_ids.absent(key_id):
                return _NOT_FOUND
            record = await self.record(key_id)
            if record is None:
                return _NOT_FOUND
        if owner_id is not None and record.user_id != owner_id:
            return _NOT_FOUND
        digest = self.hashers.get(record.hash_scheme)
        if digest is None or not key_format.hashes_match(digest(presented), record.key_digest):
            return _NOT_FOUND
        now = self.clock()
        verification = self._refusal(record, now, required_scopes, client_ip)
        if verification is None:
            if record.identity is None:
                verification = await self._spend(record, cost, now)
            else:
                verification = await self._spend_with_identity(record, record.identity, cost, now)
        self.usage.record(record.id, now, verification.outcome, None if record.identity is None else record.identity.id)
        return verification

    def _refusal(
        self, record: KeyRecord, now: datetime, required_scopes: Collection[str], client_ip: IPAddress | None
    ) -> Verification | None:
        """Why a key whose secret matched may not be used at all, if it may not."""
        if not record.is_active:
            return Verification(Outcome.REVOKED, record)
        if not record.enabled:
            return Verification(Outcome.DISABLED, record)
        if record.expires_at is not None and record.expires_at <= now:
            return Verification(Outcome.EXPIRED, record)
        if record.ip_networks and (client_ip is None or not in_networks(client_ip, record.ip_networks)):
            return Verification(Outcome.IP_NOT_ALLOWED, record)
        for scope in required_scopes:
            if scope not in record.scopes:
                return Verification(Outcome.INSUFFICIENT_SCOPES, record, missing_scope=scope)
        return None

    async def _spend(self, record: KeyRecord, cost: int, now: datetime) -> Verification:
        """A key without an identity: its rate limit, then its quota."""
        decision = None
        policy = record.rate_limit or self.default_rate_limit
        if policy is not None:
            decision = await self.limits.hit(
                record.rate_limit_bucket, limit=policy.limit, window_seconds=policy.window_seconds, cost=cost, now=now
            )
            if decision is not None and not decision.allowed:
                self._alert_rate_limited(record, decision, now)
                return Verification(Outcome.RATE_LIMITED, record, ratelimit=decision)
        quota_remaining = None
        if record.quota_holder_id is not None:
            quota_remaining = await self.quotas.consume(record.quota_holder_id, cost, now)
            self._alert_quota(record, self.quotas, "k", record.quota_holder_id, quota_remaining)
            if quota_remaining is None:
                # A cost larger than the balance is refused whole; the balance itself is reported as it is.
                balance = self.quotas.balance(record.quota_holder_id)
                return Verification(Outcome.QUOTA_EXCEEDED, record, ratelimit=decision, quota_remaining=balance)
        return Verification(Outcome.VALID, record, ratelimit=decision, quota_remaining=quota_remaining)

    async def _spend_with_identity(
        self, record: KeyRecord, identity: IdentityRecord, cost: int, now: datetime
    ) -> Verification:
        """A key of an identity: both rate limits in one decision (one round trip; a refusal by either spends
        neither), then the key's quota and the identity's (a refusal by the identity's gives the key's back)."""
        counters = []
        policy = record.rate_limit or self.default_rate_limit
        if policy is not None:
            counters.append(Counter(record.rate_limit_bucket, policy.limit, policy.window_seconds))
        if identity.rate_limit is not None:
            counters.append(
                Counter(identity.rate_limit_bucket, identity.rate_limit.limit, identity.rate_limit.window_seconds)
            )
        decision = identity_decision = None
        if counters:
            decisions = await self.limits.hit_all(counters, cost=cost, now=now)
            if decisions is not None:
                decision = decisions[0] if policy is not None else None
                identity_decision = decisions[-1] if identity.rate_limit is not None else None
                if not all(d.allowed for d in decisions):
                    self._alert_rate_limited(record, next(d for d in decisions if not d.allowed), now)
                    return Verification(
                        Outcome.RATE_LIMITED, record, ratelimit=decision, identity_ratelimit=identity_decision
                    )
        quota_remaining = None
        holder_id = record.quota_holder_id
        if holder_id is not None:
            quota_remaining = await self.quotas.consume(holder_id, cost, now)
            self._alert_quota(record, self.quotas, "k", holder_id, quota_remaining)
            if quota_remaining is None:
                return Verification(
                    Outcome.QUOTA_EXCEEDED,
                    record,
                    ratelimit=decision,
                    quota_remaining=self.quotas.balance(holder_id),
                    identity_ratelimit=identity_decision,
                )
        if identity.has_quota:
            identity_remaining = await self.identity_quotas.consume(identity.id, cost, now)
            self._alert_quota(record, self.identity_quotas, "i", identity.id, identity_remaining)
            if identity_remaining is None:
                if holder_id is not None:
                    self.quotas.refund(holder_id, cost, now)
                return Verification(
                    Outcome.QUOTA_EXCEEDED,
                    record,
                    ratelimit=decision,
                    quota_remaining=self.identity_quotas.balance(identity.id),
                    identity_ratelimit=identity_decision,
                )
            # The answer's quota_remaining is what the next request can spend: the smaller balance.
            quota_remaining = (
                identity_remaining if quota_remaining is None else min(quota_remaining, identity_remaining)
            )
        return Verification(
            Outcome.VALID,
            record,
            ratelimit=decision,
            quota_remaining=quota_remaining,
            identity_ratelimit=identity_decision,
        )

    # Alerts (events of the hot path): noted in memory, written as events by the usage flush, each once per dedupe
    # key across processes (docs/WEBHOOKS.md, "Alerts").

    def _alert_rate_limited(self, record: KeyRecord, refused_by: Decision, now: datetime) -> None:
        """key.rate_limited, at most once per key and window."""
        window = int(now.timestamp()) // refused_by.window_seconds
        dedupe_key = f"key.rate_limited:{record.id}:{refused_by.window_seconds}:{window}"
        self.usage.alert("key.rate_limited", record.id, dedupe_key)

    def _alert_quota(
        self, record: KeyRecord, ledger: QuotaLedger, kind: str, holder_id: int, remaining: int | None
    ) -> None:
        """key.quota_exhausted when nothing is left (or a request was refused), key.quota_low when 10% or less of a
        refill's amount is left; once per balance (`kind` "k" a key's, "i" an identity's) and refill period."""
        if remaining is None or remaining == 0:
            event_type = "key.quota_exhausted"
        elif ledger.is_low(holder_id, remaining):
            event_type = "key.quota_low"
        else:
            return
        period = ledger.period_label(holder_id)
        self.usage.alert(event_type, record.id, f"{event_type}:{kind}{holder_id}:{period}")
