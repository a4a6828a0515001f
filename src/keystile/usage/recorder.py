"""Usage buffered in memory and written in batches, never once per request (docs/DESIGN.md, "Usage history").

Every verification whose secret matched is counted here: per key and per identity, per UTC hour, by outcome
category. A key's valid uses also give its `use_count` and `last_used_at`, so the hot path does one dict update for
both. `flush` writes it all in one transaction and, about once an hour, deletes the hours past retention.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Update, case, delete, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from keystile.clock import Clock, system_clock
from keystile.db import DatabaseIncidents
from keystile.events import outbox
from keystile.keys.models import ApiKey
from keystile.keys.records import Outcome
from keystile.usage import upserts
from keystile.usage.models import COUNT_COLUMNS, IdentityUsageHour, KeyUsageHour

logger = logging.getLogger(__name__)

HOUR = timedelta(hours=1)
PRUNE_EVERY = HOUR
DEFAULT_RETENTION_DAYS = 90

# A tally's counts are in the order of COUNT_COLUMNS; every outcome after a matched secret falls in one of them.
_VALID, _RATE_LIMITED, _QUOTA_EXCEEDED, _REJECTED = range(len(COUNT_COLUMNS))
_COLUMN_OF = {
    Outcome.VALID: _VALID,
    Outcome.RATE_LIMITED: _RATE_LIMITED,
    Outcome.QUOTA_EXCEEDED: _QUOTA_EXCEEDED,
    Outcome.REVOKED: _REJECTED,
    Outcome.DISABLED: _REJECTED,
    Outcome.EXPIRED: _REJECTED,
    Outcome.IP_NOT_ALLOWED: _REJECTED,
    Outcome.INSUFFICIENT_SCOPES: _REJECTED,
}  # NOT_FOUND is absent: no key is known to count it against

# Before any real time: "no valid use yet" for a tally, "never" for the cached hour and the last prune.
_NEVER = datetime.min.replace(tzinfo=UTC)


@dataclass(slots=True)
class PendingUsage:
    """A key's valid uses not yet written, as `KeyManager.read` adds them to what is stored."""

    count: int
    last_used_at: datetime


class KeyTally:
    """One key's counts in one hour, and the newest of its valid uses in that hour."""

    __slots__ = ("counts", "last_used_at")

    def __init__(self) -> None:
        self.counts = [0, 0, 0, 0]
        self.last_used_at = _NEVER


class _Hour:
    """The tallies of one UTC hour [start, end), per key and per identity."""

    __slots__ = ("end", "identities", "keys", "start")

    def __init__(self, start: datetime) -> None:
        self.start = start
        self.end = start + HOUR
        self.keys: dict[int, KeyTally] = {}
        self.identities: dict[int, list[int]] = {}


# Holds no time at all (start == end): the first record after it takes the slow path and finds its hour.
_NO_HOUR = _Hour(_NEVER)
_NO_HOUR.end = _NEVER


def hour_start(at: datetime) -> datetime:
    """The start of the UTC hour holding `at`."""
    return at.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


class UsageRecorder:
    """Counts verifications in memory; `flush` writes them and is safe to call at any time.

    Recording is a dict update with no await. The hour a count falls in is remembered, so while the clock stays in
    it a record costs one range check more than a bare counter (flooring a datetime costs ten times that).

    A flush takes the whole buffer at once and writes, in one transaction, one UPDATE per key that was used (its
    `use_count` and `last_used_at`) and one upsert per key-hour and identity-hour that adds to what is stored, so the
    counts of several processes add up exactly. If the write fails, everything goes back into the buffer, so nothing
    recorded is lost: while the database is down the counts wait there, flush after flush, and the outage is logged
    once (by `incidents`). Counts for a key or identity deleted meanwhile are dropped by the upsert itself (it inserts
    only while the row it refers to exists), so they never wedge the flushes that follow.
    """

    def __init__(
        self,
        session_factory: async_sessionmaker[AsyncSession],
        *,
        incidents: DatabaseIncidents,
        clock: Clock = system_clock,
        retention_days: int = DEFAULT_RETENTION_DAYS,
    ) -> None:
        self._session_factory = session_factory
        self._incidents = incidents
        self._clock = clock
        self._retention = timedelta(days=retention_days)
        self._hours: dict[datetime, _Hour] = {}
        self._current = _NO_HOUR  # the latest hour recorded into, kept for the next record's range check
        self._flush_lock = asyncio.Lock()
        self._next_prune = _NEVER
        # Alerts seen on the hot path (key.quota_low, key.quota_exhausted, key.rate_limited), by dedupe key: written
        # as events by the next flush, once ever per dedupe key across processes (events.outbox.emit_once).
        self._alerts: dict[str, tuple[str, int]] = {}

    def record(
        self, api_key_id: int, at: datetime, outcome: Outcome = Outcome.VALID, identity_id: int | None = None
    ) -> None:
        """Count one verification of a key (and of its identity) at `at`, an aware datetime."""
        column = _COLUMN_OF.get(outcome)
        if column is None:
            return
        hour = self._current
        if not hour.start <= at < hour.end:
            hour = self._hour_of(at)
        tally = hour.keys.get(api_key_id)
        if tally is None:
            tally = hour.keys[api_key_id] = KeyTally()
        tally.counts[column] += 1
        if column == _VALID and at > tally.last_used_at:
            tally.last_used_at = at
        if identity_id is not None:
            counts = hour.identities.get(identity_id)
            if counts is None:
                counts = hour.identities[identity_id] = [0, 0, 0, 0]
            counts[column] += 1

    def alert(self, event_type: str, api_key_id: int, dedupe_key: str) -> None:
        """Note an event of the hot path for the next flush: a dict update, no I/O (docs/WEBHOOKS.md, "Alerts")."""
        if dedupe_key not in self._alerts:
            self._alerts[dedupe_key] = (event_type, api_key_id)

    def _hour_of(self, at: datetime) -> _Hour:
        """The slow path, once an hour (and for a late record of an earlier hour, which leaves the cache alone)."""
        start = hour_start(at)
        hour = self._hours.get(start)
        if hour is None:
            hour = self._hours[start] = _Hour(start)
        if start > self._current.start:
            self._current = hour
        return hour

    def __len__(self) -> int:
        """How many keys have counts not yet written."""
        return len({api_key_id for hour in self._hours.values() for api_key_id in hour.keys})

    def pending_for(self, api_key_id: int) -> PendingUsage | None:
        """The key's valid uses not yet written, or None when there are none. One lookup per buffered hour (one or
        two, unless the database has been down for hours): key reads call this for every row of a page."""
        count, last_used_at = 0, _NEVER
        for hour in self._hours.values():
            tally = hour.keys.get(api_key_id)
            if tally is not None and tally.counts[_VALID]:
                count += tally.counts[_VALID]
                last_used_at = max(last_used_at, tally.last_used_at)
        return PendingUsage(count, last_used_at) if count else None

    async def flush(self) -> int:
        """Write the buffer, then delete hours past retention if an hour has passed since the last time; return how
        many keys had counts written."""
        async with self._flush_lock:
            batch, self._hours, self._current = self._hours, {}, _NO_HOUR
            alerts, self._alerts = self._alerts, {}
            keys = {api_key_id for hour in batch.values() for api_key_id in hour.keys}
            if batch or alerts:
                try:
                    await self._write(batch, alerts)
                except Exception as error:
                    self._merge_back(batch)
                    self._alerts = alerts | self._alerts
                    if not self._incidents.report(error):
                        logger.exception("usage flush failed; %d keys kept for the next flush", len(keys))
                    raise
            await self._prune_if_due()
            return len(keys)

    async def _write(self, batch: dict[datetime, _Hour], alerts: dict[str, tuple[str, int]]) -> None:
        hours = sorted(batch.values(), key=lambda hour: hour.start)
        # Rows in one order (key, then hour) in every process, so two flushes at once cannot deadlock.
        key_rows = sorted(_key_rows(hours), key=lambda row: (row["subject"], row["hour"]))
        identity_rows = sorted(_identity_rows(hours), key=lambda row: (row["subject"], row["hour"]))
        async with self._session_factory() as session, session.begin():
            for api_key_id, pending in sorted(_valid_uses(hours).items()):
                await session.execute(_usage_update(api_key_id, pending))
            dialect = session.get_bind().dialect.name
            if key_rows:
                await session.execute(upserts.key_hours(dialect), key_rows)
            if identity_rows:
                await session.execute(upserts.identity_hours(dialect), identity_rows)
            if alerts:
                await _write_alerts(session, alerts, self._clock())

    def _merge_back(self, batch: dict[datetime, _Hour]) -> None:
        for old in batch.values():
            hour = self._hours.get(old.start)
            if hour is None:
                self._hours[old.start] = old
                continue
            for api_key_id, kept in old.keys.items():
                tally = hour.keys.get(api_key_id)
                if tally is None:
                    hour.keys[api_key_id] = kept
                else:
                    tally.counts = [a + b for a, b in zip(tally.counts, kept.counts, strict=True)]
                    tally.last_used_at = max(tally.last_used_at, kept.last_used_at)
            for identity_id, kept_counts in old.identities.items():
                counts = hour.identities.get(identity_id)
                if counts is None:
                    hour.identities[identity_id] = kept_counts
                else:
                    counts[:] = [a + b for a, b in zip(counts, kept_counts, strict=True)]

    async def _prune_if_due(self) -> None:
        """Delete the hours older than retention, at most once per PRUNE_EVERY. Housekeeping: a failure is logged (an
        outage once) and tried again at the next flush, never raised; two processes pruning at once delete the same
        rows, which is harmless."""
        now = self._clock()
        if now < self._next_prune:
            return
        cutoff = hour_start(now) - self._retention
        try:
            async with self._session_factory() as session, session.begin():
                for model in (KeyUsageHour, IdentityUsageHour):
                    await session.execute(delete(model).where(model.hour < cutoff))
        except Exception as error:
            if not self._incidents.report(error):
                logger.exception("usage pruning failed; tried again at the next flush")
            return
        self._next_prune = now + PRUNE_EVERY

    async def run_periodically(self, interval_seconds: float) -> None:
        while True:
            await asyncio.sleep(interval_seconds)
            try:
                await self.flush()
            except Exception:  # noqa: S112  (logged in flush, or once per database outage; the next tick retries)
                continue


def _valid_uses(hours: Iterable[_Hour]) -> dict[int, PendingUsage]:
    """Per key, its valid uses over `hours` and the newest of them (keys with none are left out)."""
    uses: dict[int, PendingUsage] = {}
    for hour in hours:
        for api_key_id, tally in hour.keys.items():
            valid = tally.counts[_VALID]
            if not valid:
                continue
            pending = uses.get(api_key_id)
            if pending is None:
                uses[api_key_id] = PendingUsage(valid, tally.last_used_at)
            else:
                pending.count += valid
                pending.last_used_at = max(pending.last_used_at, tally.last_used_at)
    return uses


def _key_rows(hours: list[_Hour]) -> Iterator[dict[str, Any]]:
    for hour in hours:
        for api_key_id, tally in hour.keys.items():
            yield upserts.row(api_key_id, hour.start, tally.counts)


def _identity_rows(hours: list[_Hour]) -> Iterator[dict[str, Any]]:
    for hour in hours:
        for identity_id, counts in hour.identities.items():
            yield upserts.row(identity_id, hour.start, counts)


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


async def _write_alerts(session: AsyncSession, alerts: dict[str, tuple[str, int]], now: datetime) -> None:
    """The hot path's alerts as events, in the flush's transaction, each about its key as it stands now."""
    rows = {
        row.id: row
        for row in await session.scalars(select(ApiKey).where(ApiKey.id.in_({key for _, key in alerts.values()})))
    }
    await outbox.emit_many(
        session,
        [
            outbox.PendingEvent(event_type, row.user_id, outbox.key_data(row), now, api_key_id=row.id, dedupe_key=key)
            for key, (event_type, api_key_id) in sorted(alerts.items())
            if (row := rows.get(api_key_id)) is not None  # a key deleted meanwhile is alerted about no more
        ],
    )
