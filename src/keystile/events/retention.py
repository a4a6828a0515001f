"""Retention: delivered and failed events, and their attempts, are deleted once older than
KEYSTILE_EVENT_RETENTION_DAYS (30).

Each serving process checks every minute and prunes at most once an hour by the service's clock; several processes
pruning at once delete the same rows, which is harmless. Deletes go in batches of `BATCH` rows, one short transaction
each, so a large backlog never holds locks the dispatcher or a request waits for. Kept whatever their age:

- an event not yet fanned out, or with a delivery still pending (retrying, replayed, or waiting for its disabled
  endpoint to be enabled again), and every attempt of a pending delivery: that is work still to do, and its history;
- an event with an attempt inside the retention period (one replayed lately goes when its last attempt does);
- an event with a `dedupe_key` while the thing it reports could be reported again (`keep_deduped_for`, e.g. a
  key.expiring stays as long as its key can be in the warning window): the row is what makes "once" hold.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Delete, Select, delete, exists, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from keystile.clock import Clock
from keystile.db import is_database_unavailable
from keystile.events.models import DeliveryAttempt, DeliveryState, OutboxEvent, WebhookDelivery

logger = logging.getLogger(__name__)

PRUNE_EVERY = timedelta(hours=1)
CHECK_SECONDS = 60.0
BATCH = 1000


@dataclass(frozen=True, slots=True)
class Pruned:
    events: int
    attempts: int


class Retention:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        *,
        clock: Clock,
        retention_days: int,
        keep_deduped_for: timedelta,
    ) -> None:
        self._sessions = sessions
        self._clock = clock
        self._retention = timedelta(days=retention_days)
        self._keep_deduped = max(self._retention, keep_deduped_for)
        self._next_prune: datetime | None = None
        self._failing = False

    def __repr__(self) -> str:
        return f"Retention(retention={self._retention}, next_prune={self._next_prune})"

    async def run(self) -> None:
        while True:
            await self.prune_if_due()
            await asyncio.sleep(CHECK_SECONDS)

    async def prune_if_due(self) -> Pruned | None:
        """`prune` unless the last one was less than an hour ago; None when it did not run (not due, or failed:
        housekeeping is logged, once per run of failures, and tried again at the next check, never raised)."""
        now = self._clock()
        if self._next_prune is not None and now < self._next_prune:
            return None
        try:
            pruned = await self.prune(now)
        except Exception as error:
            self._report(error)
            return None
        self._failing = False
        self._next_prune = now + PRUNE_EVERY
        if pruned.events or pruned.attempts:
            logger.info("pruned %d events and %d attempts past retention", pruned.events, pruned.attempts)
        return pruned

    async def prune(self, now: datetime) -> Pruned:
        cutoff = now - self._retention
        # Attempts first: an event goes only once none of its attempts is left (see the module docstring).
        attempts = await self._delete_in_batches(DeliveryAttempt, _old_finished_attempts(cutoff))
        events = await self._delete_in_batches(OutboxEvent, _finished_events(cutoff, now - self._keep_deduped))
        return Pruned(events=events, attempts=attempts)

    async def _delete_in_batches(self, model: type[DeliveryAttempt] | type[OutboxEvent], chosen: Select[int]) -> int:
        deleted = 0
        while True:
            statement: Delete = delete(model).where(model.id.in_(chosen.limit(BATCH)))
            async with self._sessions() as session, session.begin():
                count = getattr(await session.execute(statement), "rowcount", 0) or 0
            deleted += count
            if count < BATCH:
                return deleted

    def _report(self, error: BaseException) -> None:
        if self._failing:
            return
        self._failing = True
        if is_database_unavailable(error):
            logger.warning("event pruning waits for the database: %s", type(error).__name__)
        else:
            logger.error("event pruning failed; tried again at the next check", exc_info=error)


def _old_finished_attempts(cutoff: datetime) -> Select[int]:
    return (
        select(DeliveryAttempt.id)
        .join(WebhookDelivery, WebhookDelivery.id == DeliveryAttempt.delivery_id)
        .where(DeliveryAttempt.at < cutoff, WebhookDelivery.state != DeliveryState.PENDING)
        .order_by(DeliveryAttempt.id)
    )


def _finished_events(cutoff: datetime, deduped_cutoff: datetime) -> Select[int]:
    pending = exists().where(WebhookDelivery.event_pk == OutboxEvent.id, WebhookDelivery.state == DeliveryState.PENDING)
    attempted = exists().where(
        WebhookDelivery.event_pk == OutboxEvent.id, DeliveryAttempt.delivery_id == WebhookDelivery.id
    )
    return (
        select(OutboxEvent.id)
        .where(
            OutboxEvent.created_at < cutoff,
            OutboxEvent.fanned_out.is_(True),
            ~pending,
            ~attempted,
            (OutboxEvent.dedupe_key.is_(None)) | (OutboxEvent.created_at < deduped_cutoff),
        )
        .order_by(OutboxEvent.id)
    )
