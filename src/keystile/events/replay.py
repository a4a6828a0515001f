"""Replay (`keystile events replay`): send past events again, after a receiver lost them or was down too long.

Nothing is sent from here. Each chosen (event, endpoint) pair becomes a pending delivery due now with its attempts
reset, so the dispatcher of any serving process sends it within a poll, with the full run of retries, and with the
event's own id as `webhook-id`: a receiver that deduplicates by it sees the same message, not a new one. A delivery
that exists is reset in place (the unique (event, endpoint) pair leaves room for one); its `claims` is bumped too,
so a send in flight when the replay commits cannot record its result over the reset.

Which endpoints: those that would get the event if it happened now (`routing.receives`: the owner's, subscribed to
its type), enabled; with `endpoint_id`, that one alone. Events not yet fanned out are left out: the dispatcher is
about to send them anyway. Everything is queued in one transaction: all of it or, on an error, none.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from keystile.events.models import DeliveryState, OutboxEvent, WebhookDelivery
from keystile.events.outbox import insert_ignoring_conflicts
from keystile.events.routing import receives
from keystile.webhooks.models import WebhookEndpoint

PAGE = 500  # events per round trip; keeps each IN list far below the drivers' parameter limits
_AGO = re.compile(r"^(\d+)\s*([smhdw])$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 604_800}


def moment(text: str, *, now: datetime) -> datetime:
    """A point in time as an operator writes it: ISO 8601 (`2025-01-31T12:00:00Z`, `2025-01-31`; without an offset
    it is UTC, like every time keystile stores) or a time ago (`90s`, `30m`, `24h`, `7d`, `2w`). ValueError else."""
    ago = _AGO.match(text.strip().lower())
    if ago is not None:
        try:
            return now - timedelta(seconds=int(ago[1]) * _UNIT_SECONDS[ago[2]])
        except OverflowError:
            raise ValueError(f"{text!r} is too far back") from None
    try:
        parsed = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(f"{text!r} is neither ISO 8601 (2025-01-31T12:00:00Z) nor a time ago (24h, 30m, 7d)") from None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


@dataclass(frozen=True, slots=True)
class Replayed:
    events: int
    deliveries: int
    endpoints: int


async def replay(
    session: AsyncSession,
    *,
    since: datetime,
    until: datetime,
    now: datetime,
    endpoint: WebhookEndpoint | None = None,
) -> Replayed:
    """Queue the events created in [since, until) again, to `endpoint` or to every enabled endpoint that receives
    them; commits. What was queued."""
    endpoints = [endpoint] if endpoint is not None else await _enabled_endpoints(session)
    events_replayed, deliveries, reached = 0, 0, set[int]()
    last_id = 0
    while endpoints:
        query = (
            select(OutboxEvent.id, OutboxEvent.owner_id, OutboxEvent.type, OutboxEvent.endpoint_id)
            .where(
                OutboxEvent.fanned_out.is_(True),
                OutboxEvent.created_at >= since,
                OutboxEvent.created_at < until,
                OutboxEvent.id > last_id,
            )
            .order_by(OutboxEvent.id)
            .limit(PAGE)
        )
        if endpoint is not None:
            query = query.where(OutboxEvent.owner_id == endpoint.user_id)
        events = (await session.execute(query)).all()
        if not events:
            break
        last_id = events[-1].id
        pairs = {(event.id, target.id) for event in events for target in endpoints if receives(target, event)}
        deliveries += await _queue(session, pairs, now)
        events_replayed += len({event_pk for event_pk, _ in pairs})
        reached |= {endpoint_id for _, endpoint_id in pairs}
    await session.commit()
    return Replayed(events=events_replayed, deliveries=deliveries, endpoints=len(reached))


async def _enabled_endpoints(session: AsyncSession) -> Sequence[Any]:
    return (
        await session.execute(
            select(WebhookEndpoint.id, WebhookEndpoint.user_id, WebhookEndpoint.events).where(
                WebhookEndpoint.enabled.is_(True)
            )
        )
    ).all()


async def _queue(session: AsyncSession, pairs: set[tuple[int, int]], now: datetime) -> int:
    """Reset the deliveries of `pairs` that exist, insert the others; how many are now queued."""
    if not pairs:
        return 0
    existing = (
        await session.execute(
            select(WebhookDelivery.id, WebhookDelivery.event_pk, WebhookDelivery.endpoint_id).where(
                WebhookDelivery.event_pk.in_({event_pk for event_pk, _ in pairs}),
                WebhookDelivery.endpoint_id.in_({endpoint_id for _, endpoint_id in pairs}),
            )
        )
    ).all()
    reset = [row.id for row in existing if (row.event_pk, row.endpoint_id) in pairs]
    if reset:
        await session.execute(
            update(WebhookDelivery)
            .where(WebhookDelivery.id.in_(reset))
            .values(
                state=DeliveryState.PENDING,
                attempts=0,
                next_attempt_at=now,
                claims=WebhookDelivery.claims + 1,
            )
            .execution_options(synchronize_session=False)
        )
    missing = pairs - {(row.event_pk, row.endpoint_id) for row in existing}
    if missing:
        rows = [
            {
                "event_pk": event_pk,
                "endpoint_id": endpoint_id,
                "state": DeliveryState.PENDING,
                "attempts": 0,
                "claims": 0,
                "next_attempt_at": now,
            }
            for event_pk, endpoint_id in sorted(missing)
        ]
        # A conflict means another replay inserted the same pair a moment ago: it is queued either way.
        await session.execute(insert_ignoring_conflicts(session, WebhookDelivery.__table__), rows)
    return len(reset) + len(missing)
