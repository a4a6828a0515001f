"""Total-use quotas, exact across processes without a database write per request.

The database row is the balance and the only source of truth (Redis is not involved, so losing Redis cannot refill
anyone). Each process leases small blocks from it with one compare-and-set UPDATE and spends them in memory: a lease
is at most a tenth of what remains (and at most `MAX_LEASE`), so the database is written once per block, not per
request. Nothing is ever admitted that was not first taken from the row, so no quota is over-admitted however many
processes run. Unspent leases go back to the row on shutdown; a crashed process loses its lease, erring on the side of
refusal.

One ledger per kind of holder: keys (`api_keys`) and identities (`identities`) keep their balances in columns of the
same names.

Refill (docs/RATE_LIMITS.md, "Refill"): a holder with a `quota_refill` has its balance set to the refill amount at each
period boundary. The first lease in a new period does it, in the same compare-and-set that takes the lease (the
condition includes `quota_refilled_at`), so it happens once whichever process gets there first. A lease belongs to the
period it was taken in: units still unspent when the period ends are void (the new period starts at `amount`, nothing
carries over), and on shutdown they are returned only to the period they came from.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from collections.abc import Callable
from datetime import datetime
from typing import NamedTuple

from sqlalchemy import Table, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from keystile.refill import next_period_start, period_start

logger = logging.getLogger(__name__)

MAX_LEASE = 100
LEASE_FRACTION = 10
_LEASE_ATTEMPTS = 8
EXHAUSTED_RECHECK_SECONDS = 5.0


class _Period(NamedTuple):
    """The refill period a lease was taken in: [start, end)."""

    start: datetime
    end: datetime


class QuotaLedger:
    def __init__(
        self,
        session_factory: async_sessionmaker[AsyncSession],
        table: Table,
        *,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._session_factory = session_factory
        self._table = table
        self._monotonic = monotonic
        self._leased: dict[int, int] = {}
        self._remaining_in_db: dict[int, int] = {}
        self._periods: dict[int, _Period] = {}  # holders with a refill: the period their lease belongs to
        self._amounts: dict[int, int] = {}  # holders with a refill: its amount (what "low" is measured against)
        self._locks: defaultdict[int, asyncio.Lock] = defaultdict(asyncio.Lock)
        # Holders whose row held nothing more when last asked, until when: a flood of requests on a used-up key must
        # not cost a database read each. A PATCH clears this at once (forget); leases returned by a stopping process
        # are seen after EXHAUSTED_RECHECK_SECONDS; a refill period's end clears it.
        self._exhausted_until: dict[int, float] = {}

    async def consume(self, holder_id: int, cost: int, now: datetime) -> int | None:
        """Spend `cost` from `holder_id`'s balance. Return what remains, or None when it does not suffice."""
        async with self._locks[holder_id]:
            period = self._periods.get(holder_id)
            if period is not None and now >= period.end:
                self._drop(holder_id)  # a new period: what was leased in the old one is void
            leased = self._leased.get(holder_id, 0)
            if leased < cost and self._exhausted_until.get(holder_id, 0.0) > self._monotonic():
                return None
            if leased < cost or holder_id not in self._remaining_in_db:
                leased += await self._lease(holder_id, need=max(0, cost - leased), now=now)
            if leased < cost:
                self._leased[holder_id] = leased
                self._exhausted_until[holder_id] = self._monotonic() + EXHAUSTED_RECHECK_SECONDS
                return None
            self._leased[holder_id] = leased - cost
            return self._remaining_in_db[holder_id] + self._leased[holder_id]

    def refund(self, holder_id: int, cost: int, now: datetime) -> None:
        """Give back units `consume` took at `now` for a request refused by another quota (its identity's). They go
        back to the lease they came from, unless that lease is gone meanwhile (a new period, a PATCH)."""
        period = self._periods.get(holder_id)
        if holder_id in self._leased and (period is None or now < period.end):
            self._leased[holder_id] += cost

    def period_label(self, holder_id: int) -> str:
        """The refill period this process spends in for `holder_id` (its start), or "once" for a quota that is never
        refilled: what makes a quota alert happen once per period."""
        period = self._periods.get(holder_id)
        return "once" if period is None else period.start.isoformat()

    def is_low(self, holder_id: int, remaining: int) -> bool:
        """Whether `remaining` is 10% or less of the holder's refill amount. A quota without a refill has no amount
        to measure against, so it is never "low" (only exhausted)."""
        amount = self._amounts.get(holder_id)
        return amount is not None and remaining * 10 <= amount

    def balance(self, holder_id: int) -> int:
        """What remains as this process last saw it: the row's balance plus its own unspent lease."""
        return self._remaining_in_db.get(holder_id, 0) + self._leased.get(holder_id, 0)

    def local_balance(self, holder_id: int) -> int:
        """Units this process has leased but not spent (counted as remaining when this process reports a holder)."""
        return self._leased.get(holder_id, 0)

    def forget(self, holder_id: int) -> None:
        """Drop a lease without returning it: the balance was set anew (PATCH) or moved (rotation)."""
        self._drop(holder_id)

    def _drop(self, holder_id: int) -> None:
        self._leased.pop(holder_id, None)
        self._remaining_in_db.pop(holder_id, None)
        self._periods.pop(holder_id, None)
        self._exhausted_until.pop(holder_id, None)

    async def _lease(self, holder_id: int, *, need: int, now: datetime) -> int:
        c = self._table.c
        # Compare-and-set instead of SELECT ... FOR UPDATE: it is atomic on SQLite too, where row locks do not exist.
        for _ in range(_LEASE_ATTEMPTS):
            async with self._session_factory() as session, session.begin():
                row = (
                    await session.execute(
                        select(
                            c.quota_remaining, c.quota_refill_amount, c.quota_refill_interval, c.quota_refilled_at
                        ).where(c.id == holder_id)
                    )
                ).first()
                if row is None or row.quota_remaining is None:
                    self._remaining_in_db[holder_id] = 0
                    return 0
                remaining, refilled_at = row.quota_remaining, row.quota_refilled_at
                values: dict[str, object] = {}
                period = None
                if row.quota_refill_interval is not None:
                    start = period_start(row.quota_refill_interval, now)
                    period = _Period(start, next_period_start(row.quota_refill_interval, start))
                    self._amounts[holder_id] = row.quota_refill_amount
                    if refilled_at is None or refilled_at < start:
                        remaining = row.quota_refill_amount  # the first lease of the period refills
                        values["quota_refilled_at"] = start
                take = min(remaining, need + min(MAX_LEASE, remaining // LEASE_FRACTION))
                if take or values:
                    values["quota_remaining"] = remaining - take
                    result = await session.execute(
                        update(self._table)
                        .where(
                            c.id == holder_id,
                            c.quota_remaining == row.quota_remaining,
                            c.quota_refilled_at.is_(None)
                            if refilled_at is None
                            else c.quota_refilled_at == refilled_at,
                        )
                        .values(values)
                    )
                    if result.rowcount != 1:  # type: ignore[attr-defined]
                        continue  # another process leased or refilled first: read the row again
            self._remaining_in_db[holder_id] = remaining - take
            if period is not None:
                self._periods[holder_id] = period
            return int(take)
        logger.warning(
            "quota lease for %s %d lost %d races in a row; refusing this request",
            self._table.name,
            holder_id,
            _LEASE_ATTEMPTS,
        )
        return 0

    async def release_all(self) -> None:
        """Return unspent leases to the database (on shutdown), each to the refill period it was taken in."""
        leases = {holder: units for holder, units in self._leased.items() if units}
        periods = dict(self._periods)
        self._leased.clear()
        self._remaining_in_db.clear()
        self._periods.clear()
        self._exhausted_until.clear()
        if not leases:
            return
        c = self._table.c
        async with self._session_factory() as session, session.begin():
            for holder_id, units in sorted(leases.items()):
                query = update(self._table).where(c.id == holder_id, c.quota_remaining.is_not(None))
                if (period := periods.get(holder_id)) is not None:
                    query = query.where(c.quota_refilled_at == period.start)  # a later period owes these nothing
                await session.execute(query.values(quota_remaining=c.quota_remaining + units))
