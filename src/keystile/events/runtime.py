"""`EventsRuntime`: what events, webhooks and leak intake need while keystile runs, owned by `Keystile`.

It has its own database engine (the worker's pool, apart from the one requests use), the secret box for webhook
secrets, the dispatcher, the expiry scan, the pruning of old events (`retention`), and GitHub's public keys when
configured. `background()` returns the loops for `Keystile` to run; `close()` hands back in-flight claims and closes
the pool.
"""

from __future__ import annotations

from collections.abc import Coroutine
from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from keystile.clock import Clock
from keystile.db import create_engine, create_session_factory
from keystile.events.dispatcher import DeliveryPolicy, Dispatcher
from keystile.events.expiry import EXPIRED_LOOKBACK, ExpiryScan
from keystile.events.outbox import install_wakeup
from keystile.events.retention import Retention
from keystile.leaks.github import GitHubKeys
from keystile.settings import Settings
from keystile.webhooks.secrets import SecretBox


def policy_of(settings: Settings) -> DeliveryPolicy:
    return DeliveryPolicy(
        retry_delays=tuple(settings.webhook_retry_delays),
        timeout_seconds=settings.webhook_timeout_seconds,
        lease_seconds=settings.webhook_lease_seconds,
        concurrency=settings.webhook_concurrency,
        per_endpoint=settings.webhook_endpoint_concurrency,
        poll_seconds=settings.webhook_poll_seconds,
        disable_after_days=settings.webhook_disable_after_days,
        allow_private=settings.webhook_allow_private,
    )


class EventsRuntime:
    def __init__(
        self,
        settings: Settings,
        *,
        engine: AsyncEngine,
        request_sessions: async_sessionmaker[AsyncSession],
        secret_key: str,
        clock: Clock,
        deliver: bool = True,
    ) -> None:
        self.settings = settings
        self.secrets = SecretBox(secret_key)
        # An in-memory SQLite database exists once per connection pool: the worker must share the app's there.
        database = make_url(settings.database_url).database
        self._own_engine = not (engine.dialect.name == "sqlite" and database in (None, "", ":memory:"))
        self.engine = create_engine(settings.database_url) if self._own_engine else engine
        self.sessions = create_session_factory(self.engine)
        self.dispatcher = Dispatcher(self.sessions, secrets=self.secrets, clock=clock, policy=policy_of(settings))
        self.expiry = ExpiryScan(
            self.sessions,
            clock=clock,
            warning_seconds=settings.expiry_warning_seconds,
            interval_seconds=settings.expiry_scan_seconds,
        )
        self.retention = Retention(
            self.sessions,
            clock=clock,
            retention_days=settings.event_retention_days,
            # An expiry event must outlive the window in which the scan could find its key again.
            keep_deduped_for=timedelta(seconds=settings.expiry_warning_seconds) + EXPIRED_LOOKBACK,
        )
        self.github_keys = GitHubKeys(Path(settings.github_scanning_keys)) if settings.github_scanning_keys else None
        self._deliver = deliver
        if deliver:
            install_wakeup(request_sessions, self.dispatcher.wake)

    def __repr__(self) -> str:
        return f"EventsRuntime(deliver={self._deliver})"

    def background(self) -> list[Coroutine[Any, Any, None]]:
        """The loops to run while keystile runs (none for a CLI command, which must not start deliveries)."""
        if not self._deliver:
            return []
        return [self.dispatcher.run(), self.expiry.run(), self.retention.run()]

    async def close(self) -> None:
        try:
            await self.dispatcher.close()
        finally:
            if self._own_engine:
                await self.engine.dispose()
