from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Update, case, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from keystile.db import DatabaseIncidents
from keystile.keys.models import ApiKey

logger = logging.getLogger(__name__)


@dataclass(slots=True)
class PendingUsage:
    count: int
    last_used_at: datetime


class UsageRecorder:
    """Counts uses per key in memory; `flush` writes one UPDATE per used key and is safe to call at any time.

    Recording is a dict update with no await, so it costs the hot path nothing measurable. A flush takes the whole
    buffer at once; if the write fails, the counts go back into the buffer so nothing recorded is lost. While the
    database is down they wait there, flush after flush, and the first flush after it is back writes them all; the
    outage is logged once (by `incidents`), not at every failed flush.
    """

    def __init__(self, session_factory: async_sessionmaker[AsyncSession], *, incidents: DatabaseIncidents) -> None:
        self._session_factory = session_factory
        self._incidents = incidents
        self._pending: dict[int, PendingUsage] = {}
        self._flush_lock = asyncio.Lock()

    def record(self, api_key_id: int, at: datetime) -> None:
        pending = self._pending.get(api_key_id)
        if pending is None:
            self._pending[api_key_id] = PendingUsage(1, at)
        else:
            pending.count += 1
            if at > pending.last_used_at:
                pending.last_used_at = at

    def __len__(self) -> int:
        """How many keys have uses not yet written."""
        return len(self._pending)

    def pending_for(self, api_key_id: int) -> PendingUsage | None:
        return self._pending.get(api_key_id)

    async def flush(self) -> int:
        """Write the buffer; return how many keys were written."""
        async with self._flush_lock:
            batch, self._pending = self._pending, {}
            if not batch:
                return 0
            try:
                async with self._session_factory() as session, session.begin():
                    for api_key_id, pending in sorted(batch.items()):
                        await session.execute(_usage_update(api_key_id, pending))
            except Exception as error:
                for api_key_id, pending in batch.items():
                    self._merge_back(api_key_id, pending)
                if not self._incidents.report(error):
                    logger.exception("usage flush failed; %d keys kept for the next flush", len(batch))
                raise
            return len(batch)

    def _merge_back(self, api_key_id: int, pending: PendingUsage) -> None:
        current = self._pending.get(api_key_id)
        if current is None:
            self._pending[api_key_id] = pending
        else:
            current.count += pending.count
            current.last_used_at = max(current.last_used_at, pending.last_used_at)

    async def run_periodically(self, interval_seconds: float) -> None:
        while True:
            await asyncio.sleep(interval_seconds)
            try:
                await self.flush()
            except Exception:  # noqa: S112  (logged in flush, or once per database outage; the next tick retries)
                continue


def _usage_update(api_key_id: int, pending: PendingUsage) -> Update:
    # Another process may have written a later last_used_at: keep whichever is newer.
    newer = case(
        (ApiKey.last_used_at.is_(None), pending.last_used_at),
        (ApiKey.last_used_at < pending.last_used_at, pending.last_used_at),
        else_=ApiKey.last_used_at,
    )
    return (
        update(ApiKey)
        .where(ApiKey.id == api_key_id)
        .values(use_count=ApiKey.use_count + pending.count, last_used_at=newer)
    )
