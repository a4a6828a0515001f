"""Time-based events: `key.expiring` (once, when a key comes within KEYSTILE_EXPIRY_WARNING_SECONDS of its expiry)
and `key.expired` (once, when the expiry passes), from a scan each serving process runs every
KEYSTILE_EXPIRY_SCAN_SECONDS.

Nothing changes in the database when a key expires, so there is no change path to emit from: the scan looks for
keys that crossed a line and emits with a dedupe key naming the key and its expiry (`outbox.emit_once`). Several
processes scanning at once write each event once; a key whose expiry is moved gets a new warning for the new date.
Keys that expired more than EXPIRED_LOOKBACK ago are not looked at (a service down for longer than that does not
announce them late); revoked keys get neither event.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from keystile.clock import Clock
from keystile.db import is_database_unavailable
from keystile.events import types
from keystile.events.outbox import PendingEvent, emit_once, key_data
from keystile.keys.models import ApiKey

logger = logging.getLogger(__name__)

EXPIRED_LOOKBACK = timedelta(days=7)
PAGE = 500


def dedupe_key(event_type: str, row: ApiKey) -> str:
    assert row.expires_at is not None
    return f"{event_type}:{row.id}:{int(row.expires_at.timestamp())}"


class ExpiryScan:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        *,
        clock: Clock,
        warning_seconds: int,
        interval_seconds: float,
    ) -> None:
        self._sessions = sessions
        self._clock = clock
        self._warning = timedelta(seconds=warning_seconds)
        self._interval = interval_seconds
        self._failing = False

    def __repr__(self) -> str:
        return f"ExpiryScan(warning={self._warning}, interval={self._interval})"

    async def run(self) -> None:
        while True:
            try:
                await self.scan()
                self._failing = False
            except Exception as error:
                if not self._failing:
                    self._failing = True
                    if is_database_unavailable(error):
                        logger.warning("expiry scan waits for the database: %s", type(error).__name__)
                    else:
                        logger.error("expiry scan failed; retrying", exc_info=error)
            await asyncio.sleep(self._interval)

    async def scan(self) -> int:
        """Emit the expiry events due now; how many were new."""
        now = self._clock()
        written = 0
        windows = (
            (types.KEY_EXPIRING, now, now + self._warning),
            (types.KEY_EXPIRED, now - EXPIRED_LOOKBACK, now),
        )
        for event_type, after, until in windows:
            written += await self._emit_between(event_type, after, until, now)
        return written

    async def _emit_between(self, event_type: str, after: datetime, until: datetime, now: datetime) -> int:
        written, last_id = 0, 0
        while True:
            async with self._sessions() as session:
                rows = list(
                    await session.scalars(
                        select(ApiKey)
                        .where(
                            ApiKey.is_active.is_(True),
                            ApiKey.expires_at > after,
                            ApiKey.expires_at <= until,
                            ApiKey.id > last_id,
                        )
                        .order_by(ApiKey.id)
                        .limit(PAGE)
                    )
                )
                if not rows:
                    return written
                events = [
                    PendingEvent(
                        event_type,
                        row.user_id,
                        key_data(row),
                        now,
                        api_key_id=row.id,
                        dedupe_key=dedupe_key(event_type, row),
                    )
                    for row in rows
                ]
                written += await emit_once(session, events)
                await session.commit()
            last_id = rows[-1].id
