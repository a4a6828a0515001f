"""`Keystile`: one running keystile instance and everything it owns, with one lifecycle.

Built from settings, an instance owns:
- the clock, the JWT signing key and the key pepper (both from SECRET_KEY), and the password hasher;
- the database engine, its session factory, and its incidents (an outage logged once, see `keystile.db`);
- the rate limiter (in process, or Redis) behind its failure guard;
- the key cache, the quota ledger (leased balances), the usage recorder (buffered counts) and the metrics;
- the invalidator, which tells other instances through Redis that a key changed, and listens for their changes;
- the key_id index, which refuses made-up keys without the database while the invalidator hears every creation;
- the `Verifier` built from those, and a `KeyManager` per session for every change to a key.

`async with Keystile(settings) as keystile:` starts what runs in the background (the periodic usage flush, the
invalidation listener) and on the way out stops it and hands everything back: buffered usage written, unspent quota
leases returned to the database, Redis connections closed, the engine disposed. The FastAPI lifespan
(`keystile.lifespan`) and every CLI command take this one path. An app holds its instance in `app.state.keystile`,
where the dependencies in `keystile.fastapi` find it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from types import TracebackType
from typing import Any, cast

from fastapi import FastAPI, Request
from sqlalchemy import Table, text
from sqlalchemy.ext.asyncio import AsyncSession

from keystile.clock import Clock, system_clock
from keystile.db import DatabaseIncidents, create_engine, create_session_factory
from keystile.events.runtime import EventsRuntime
from keystile.identities.models import Identity
from keystile.identities.service import IdentityManager
from keystile.keys import key_ids
from keystile.keys.cache import DEFAULT_TTL_SECONDS, SUBSCRIBED_TTL_SECONDS, KeyCache
from keystile.keys.format import derive_pepper, key_hashers
from keystile.keys.invalidation import Invalidator
from keystile.keys.loader import KeyLoader
from keystile.keys.models import ApiKey
from keystile.keys.quota import QuotaLedger
from keystile.keys.service import KeyManager
from keystile.keys.verification import Verifier
from keystile.metrics import Metrics
from keystile.net import parse_networks
from keystile.ratelimit.base import RateLimiter
from keystile.ratelimit.guard import LimiterGuard
from keystile.ratelimit.memory import MemoryRateLimiter
from keystile.ratelimit.redis import RedisRateLimiter
from keystile.settings import Settings
from keystile.usage.recorder import UsageRecorder
from keystile.users.passwords import Passwords

USAGE_FLUSH_SECONDS = 5.0


class Keystile:
    def __init__(
        self,
        settings: Settings | None = None,
        *,
        clock: Clock = system_clock,
        passwords: Passwords | None = None,
        usage_flush_seconds: float = USAGE_FLUSH_SECONDS,
        monotonic: Callable[[], float] = time.monotonic,
        deliver_events: bool = True,
    ) -> None:
        """`clock` tells the time of day (expiry, windows, audit); `monotonic` measures intervals (cache TTL and
        stale-if-error, retries of a failed rate-limit backend, re-reading an exhausted quota). Tests pass fakes for
        both, instead of sleeping.
        """
        self.settings = settings if settings is not None else Settings()
        self.clock = clock
        self.passwords = passwords if passwords is not None else Passwords()
        self.signing_key = self.settings.resolved_secret_key()
        self.pepper = derive_pepper(self.signing_key)
        self.trusted_proxies = parse_networks(self.settings.trusted_proxies)
        self.engine = create_engine(self.settings.database_url)
        self.session_factory = create_session_factory(self.engine)
        self.database_incidents = DatabaseIncidents(self.engine, monotonic=monotonic)
        self.metrics = Metrics()
        limiter: RateLimiter = (
            RedisRateLimiter.from_url(self.settings.redis_url) if self.settings.redis_url else MemoryRateLimiter()
        )
        self.limits = LimiterGuard(
            limiter, failure_mode=self.settings.rate_limit_failure, metrics=self.metrics, monotonic=monotonic
        )
        self.usage = UsageRecorder(
            self.session_factory,
            incidents=self.database_incidents,
            clock=self.clock,
            retention_days=self.settings.usage_retention_days,
        )
        self.quotas = QuotaLedger(self.session_factory, cast(Table, ApiKey.__table__), monotonic=monotonic)
        self.identity_quotas = QuotaLedger(self.session_factory, cast(Table, Identity.__table__), monotonic=monotonic)
        self.key_cache = KeyCache(stale_if_error_seconds=self.settings.stale_if_error_seconds, monotonic=monotonic)
        self.invalidator = Invalidator(
            self._forget_key,
            self._resubscribed,
            self.settings.redis_url,
            on_lost=self._unsubscribed,
            on_identity_change=self._forget_identity,
            on_quota_reset=self._quota_reset,
        )
        self.key_ids = key_ids.KnownKeyIds(
            self.engine,
            self.invalidator,
            self.database_incidents,
            enabled=self.settings.redis_url is not None,
        )
        self._key_loader = KeyLoader(self.engine, self.database_incidents)
        self.verifier = Verifier(
            prefix=self.settings.key_prefix,
            hashers=key_hashers(self.pepper),
            cache=self.key_cache,
            load=self._key_loader,
            key_ids=self.key_ids,
            limits=self.limits,
            default_rate_limit=self.settings.default_rate_limit,
            quotas=self.quotas,
            identity_quotas=self.identity_quotas,
            usage=self.usage,
            metrics=self.metrics,
            clock=self.clock,
        )
        if self.settings.otel_enabled:
            from keystile.tracing import traced  # imports OpenTelemetry only when enabled

            self.verifier = traced(self.verifier)
        self._usage_flush_seconds = usage_flush_seconds
        self._background: list[asyncio.Task[None]] = []
        # Webhook delivery and the expiry scan run in serving processes; a CLI command passes deliver_events=False
        # (its events wait in the outbox for a server).
        self.events = EventsRuntime(
            self.settings,
            engine=self.engine,
            request_sessions=self.session_factory,
            secret_key=self.signing_key,
            clock=self.clock,
            deliver=deliver_events,
        )

    def __repr__(self) -> str:
        return f"Keystile(database={self.engine.url.render_as_string(hide_password=True)!r})"

    def key_manager(self, session: AsyncSession) -> KeyManager:
        """Reads and changes of keys in `session`; every change commits and then reaches every instance."""
        return KeyManager(
            session,
            prefix=self.settings.key_prefix,
            pepper=self.pepper,
            clock=self.clock,
            quotas=self.quotas,
            usage=self.usage,
            invalidator=self.invalidator,
        )

    def identity_manager(self, session: AsyncSession) -> IdentityManager:
        """Reads and changes of identities in `session`; every change commits and then reaches every instance."""
        return IdentityManager(session, clock=self.clock, quotas=self.identity_quotas, invalidator=self.invalidator)

    def _forget_identity(self, identity_id: int) -> None:
        """Cached records of the identity's keys carry its limits: they go."""
        self.key_cache.invalidate_identity(identity_id)

    def _quota_reset(self, ledger: str, holder_id: int) -> None:
        """A balance set anew (a PATCH of quota or refill, a rotation moving it): this process's lease on it is void."""
        (self.quotas if ledger == "key" else self.identity_quotas).forget(holder_id)

    def _forget_key(self, key_id: str, api_key_id: int) -> None:
        self.key_cache.invalidate(key_id)
        self.key_ids.add(key_id)  # an announced key exists, whether it was changed or created

    def _resubscribed(self) -> None:
        """Announcements may have been missed before this subscription: what was cached goes. From now on every
        change is heard as it happens, so entries may live longer (docs/PERFORMANCE.md, "The cold path")."""
        self.key_cache.clear()
        self.key_cache.set_ttl(SUBSCRIBED_TTL_SECONDS)
        self.key_ids.resync()

    def _unsubscribed(self) -> None:
        """Changes may go unheard until the next subscription: back to the short backstop, for what is cached too."""
        self.key_cache.set_ttl(DEFAULT_TTL_SECONDS)

    async def unavailable(self) -> list[str]:
        """What does not answer right now: "database", "redis" (for readiness)."""
        down = []
        try:
            async with self.engine.connect() as connection:
                await connection.execute(text("SELECT 1"))
        except Exception as error:
            self.database_incidents.report(error)
            down.append("database")
        if self.settings.redis_url and not await self.limits.ping():
            down.append("redis")
        return down

    async def __aenter__(self) -> Keystile:
        self._background = [
            asyncio.create_task(self.usage.run_periodically(self._usage_flush_seconds)),
            asyncio.create_task(self.invalidator.listen()),
        ]
        self._background.extend(asyncio.create_task(loop) for loop in self.events.background())
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        for task in self._background:
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        self._background = []
        try:
            await self.usage.flush()
            await self.quotas.release_all()
            await self.identity_quotas.release_all()
        finally:
            await self.events.close()
            await self.key_ids.close()
            await self._key_loader.close()
            await self.invalidator.close()
            await self.limits.close()
            await self.engine.dispose()

    def install(self, app: FastAPI) -> None:
        """Make this instance the one that `app`'s keystile dependencies use."""
        app.state.keystile = self

    @contextlib.asynccontextmanager
    async def lifespan(self, app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        """`FastAPI(lifespan=keystile.lifespan)`: installs this instance on the app and runs it while the app runs."""
        self.install(app)
        async with self:
            yield {}


def keystile_of(request: Request) -> Keystile:
    keystile = getattr(request.app.state, "keystile", None)
    if not isinstance(keystile, Keystile):
        raise RuntimeError("keystile is not installed on this app: use Keystile(...).lifespan or .install(app)")
    return keystile
