"""`Keystile`: everything one running instance owns (engine, pepper, clock, usage buffer), with its lifespan.

The service app and any FastAPI app that embeds keystile as a library hold one of these in `app.state.keystile`;
the dependencies in `keystile.fastapi` find it there.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request

from keystile.clock import Clock, system_clock
from keystile.db import create_engine, create_session_factory
from keystile.keys.cache import KeyCache
from keystile.keys.format import derive_pepper
from keystile.keys.invalidation import Invalidator
from keystile.keys.quota import QuotaLedger
from keystile.metrics import Metrics
from keystile.net import parse_networks
from keystile.ratelimit.base import RateLimiter
from keystile.ratelimit.guard import LimiterGuard
from keystile.ratelimit.memory import MemoryRateLimiter
from keystile.ratelimit.redis import RedisRateLimiter
from keystile.settings import Settings
from keystile.usage.recorder import UsageRecorder

logger = logging.getLogger(__name__)

USAGE_FLUSH_INTERVAL_SECONDS = 5.0


class Keystile:
    def __init__(self, settings: Settings | None = None, *, clock: Clock = system_clock) -> None:
        self.settings = settings if settings is not None else Settings()
        self.clock = clock
        secret_key = self.settings.resolved_secret_key()
        self.signing_key = secret_key
        self.pepper = derive_pepper(secret_key)
        self.trusted_proxies = parse_networks(self.settings.trusted_proxies)
        self.engine = create_engine(self.settings.database_url)
        self.session_factory = create_session_factory(self.engine)
        self.usage = UsageRecorder(self.session_factory)
        self.quotas = QuotaLedger(self.session_factory)
        self.metrics = Metrics()
        default = self.settings.parsed_default_rate_limit
        self.default_rate_limit_policy = (default.limit, default.window_seconds) if default else None
        self.key_failure_limit = self.settings.parsed_key_failure_limit
        limiter: RateLimiter = (
            RedisRateLimiter.from_url(self.settings.redis_url) if self.settings.redis_url else MemoryRateLimiter()
        )
        self.limits = LimiterGuard(limiter, failure_mode=self.settings.rate_limit_failure, metrics=self.metrics)
        self.key_cache = KeyCache()
        self.invalidator = Invalidator(self._forget_key, self.key_cache.clear, self.settings.redis_url)

    def _forget_key(self, key_id: str, api_key_id: int) -> None:
        self.key_cache.invalidate(key_id)
        self.quotas.forget(api_key_id)

    async def key_changed(self, key_id: str, api_key_id: int) -> None:
        """Call after committing any change to a key: no instance may go on using its old state."""
        await self.invalidator.key_changed(key_id, api_key_id)

    def __repr__(self) -> str:
        return f"Keystile(database={self.engine.url.render_as_string(hide_password=True)!r})"

    def install(self, app: FastAPI) -> None:
        """Make this instance the one that `app`'s keystile dependencies use."""
        app.state.keystile = self

    @contextlib.asynccontextmanager
    async def lifespan(self, app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        self.install(app)
        background = [
            asyncio.create_task(self.usage.run_periodically(USAGE_FLUSH_INTERVAL_SECONDS)),
            asyncio.create_task(self.invalidator.listen()),
        ]
        try:
            yield {}
        finally:
            for task in background:
                task.cancel()
            await asyncio.gather(*background, return_exceptions=True)
            try:
                await self.usage.flush()
                await self.quotas.release_all()
            finally:
                await self.invalidator.close()
                await self.limits.limiter.close()
                await self.engine.dispose()


def runtime_of(request: Request) -> Keystile:
    runtime = getattr(request.app.state, "keystile", None)
    if not isinstance(runtime, Keystile):
        raise RuntimeError("keystile is not installed on this app: use Keystile(...).lifespan or .install(app)")
    return runtime
