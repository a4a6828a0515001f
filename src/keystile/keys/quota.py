"""Total-use quotas, exact across processes without a database write per request.

The database row is the balance and the only source of truth (Redis is not involved, so losing Redis cannot refill
anyone). Each process leases small blocks from it with one locked UPDATE and spends them in memory: a lease is at
most a tenth of what remains (and at most `MAX_LEASE`), so the database is written once per block, not per request.
Nothing is ever admitted that was not first taken from the row, so no quota is over-admitted however many processes
run. Unspent leases go back to the row on shutdown; a crashed process loses its lease, erring on the side of refusal.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from collections.abc import Callable

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from keystile.keys.models import ApiKey

logger = logging.getLogger(__name__)

MAX_LEASE = 100
LEASE_FRACTION = 10
_LEASE_ATTEMPTS = 8
EXHAUSTED_RECHECK_SECONDS = 5.0


class QuotaLedger:
    def __init__(
        self, session_factory: async_sessionmaker[AsyncSession], *, monotonic: Callable[[], float] = time.monotonic
    ) -> None:
        self._session_factory = session_factory
        self._monotonic = monotonic
        self._leased: dict[int, int] = {}
        self._remaining_in_db: dict[int, int] = {}
        self._locks: defaultdict[int, asyncio.Lock] = defaultdict(asyncio.Lock)
        # Keys whose row held nothing more when last asked, until when: a flood of requests on a used-up key must not
        # cost a database read each. A PATCH clears this at once (forget); leases returned by a stopping process are
        # seen after EXHAUSTED_RECHECK_SECONDS.
        self._exhausted_until: dict[int, float] = {}

    async def consume(self, holder_id: int, cost: int) -> int | None:
        """Spend `cost` from the balance of key `holder_id`. Return what remains, or None when it does not suffice."""
        async with self._locks[holder_id]:
            leased = self._leased.get(holder_id, 0)
            if leased < cost and self._exhausted_until.get(holder_id, 0.0) > self._monotonic():
                return None
            if leased < cost or holder_id not in self._remaining_in_db:
                leased += await self._lease(holder_id, need=max(0, cost - leased))
            if leased < cost:
                self._leased[holder_id] = leased
                self._exhausted_until[holder_id] = self._monotonic() + EXHAUSTED_RECHECK_SECONDS
                return None
            self._leased[holder_id] = leased - cost
            return self._remaining_in_db[holder_id] + self._leased[holder_id]

    def balance(self, holder_id: int) -> int:
        """What remains as this process last saw it: the row's balance plus its own unspent lease."""
        return self._remaining_in_db.get(holder_id, 0) + self._leased.get(holder_id, 0)

    def local_balance(self, holder_id: int) -> int:
        """Units this process has leased but not spent (counted as remaining when this process reports a key)."""
        return self._leased.get(holder_id, 0)

    def forget(self, holder_id: int) -> None:
        """Drop a lease without returning it: the balance was set anew (PATCH) or moved (rotation)."""
        self._leased.pop(holder_id, None)
        self._remaining_in_db.pop(holder_id, None)
        self._exhausted_until.pop(holder_id, None)

    async def _lease(self, holder_id: int, *, need: int) -> int:
        # Compare-and-set instead of SELECT ... FOR UPDATE: it is atomic on SQLite too, where row locks do not exist.
        for _ in range(_LEASE_ATTEMPTS):
            async with self._session_factory() as session, session.begin():
                remaining = await session.scalar(select(ApiKey.quota_remaining).where(ApiKey.id == holder_id))
                if remaining is None:
                    self._remaining_in_db[holder_id] = 0
                    return 0
                take = min(remaining, need + min(MAX_LEASE, remaining // LEASE_FRACTION))
                if take:
                    result = await session.execute(
                        update(ApiKey)
                        .where(ApiKey.id == holder_id, ApiKey.quota_remaining == remaining)
                        .values(quota_remaining=remaining - take)
                    )
                    if result.rowcount != 1:  # type: ignore[attr-defined]
                        continue  # another process leased first: read the new balance and try again
            self._remaining_in_db[holder_id] = remaining - take
            return take
        logger.warning(
            "quota lease for key %d lost %d races in a row; refusing this request", holder_id, _LEASE_ATTEMPTS
        )
        return 0

    async def release_all(self) -> None:
        """Return unspent leases to the database (on shutdown)."""
        leases = {holder: units for holder, units in self._leased.items() if units}
        self._leased.clear()
        self._remaining_in_db.clear()
        self._exhausted_until.clear()
        if not leases:
            return
        async with self._session_factory() as session, session.begin():
            for holder_id, units in sorted(leases.items()):
                await session.execute(
                    update(ApiKey)
                    .where(ApiKey.id == holder_id, ApiKey.quota_remaining.is_not(None))
                    .values(quota_remaining=ApiKey.quota_remaining + units)
                )
