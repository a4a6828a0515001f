"""Writing events: into the caller's transaction, so an event exists exactly when its change was committed.

`emit` is to events what `audit.record` is to the audit log: it adds a row to the session and the caller commits.
A crash after the commit loses nothing (the row waits in `outbox_events` for any process's dispatcher), and a change
that rolls back sends nothing. `emit_once` is for events that must happen once across processes (key.expiring,
key.quota_low, ...): a unique `dedupe_key` turns a second insert into a no-op.

After a commit that emitted, the dispatcher of this process is woken (when the session factory carries its wake
callback, see `install_wakeup`), so delivery starts at once instead of at the next poll.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import event, insert, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import Session

from keystile.events.models import OutboxEvent
from keystile.keys import format as key_format
from keystile.keys.models import ApiKey
from keystile.keys.schemas import KeyRead

_WAKE = "keystile.events.wake"
_WAKE_ARMED = "keystile.events.wake_armed"
_EVENT_ID_DIGITS = 22  # base62 digits of 128 random bits


@dataclass(frozen=True, slots=True)
class PendingEvent:
    """An event not yet written: what `emit_once` and `emit_many` take."""

    type: str
    owner_id: int
    data: dict[str, Any]
    at: datetime
    api_key_id: int | None = None
    endpoint_id: int | None = None
    dedupe_key: str | None = field(default=None)


def new_event_id() -> str:
    return "msg_" + key_format.base62_encode(int.from_bytes(secrets.token_bytes(16), "big"), _EVENT_ID_DIGITS)


def body_of(event_type: str, at: datetime, data: dict[str, Any]) -> str:
    """The JSON body every delivery of the event sends: `{"type", "timestamp", "data"}`."""
    timestamp = at.isoformat().replace("+00:00", "Z")
    return json.dumps({"type": event_type, "timestamp": timestamp, "data": data}, separators=(",", ":"))


def key_data(row: ApiKey) -> dict[str, Any]:
    """A key as events carry it: the API's key object (hint, never the key or its hash)."""
    return KeyRead.from_row(row).model_dump(mode="json")


def _row(pending: PendingEvent) -> dict[str, Any]:
    return {
        "event_id": new_event_id(),
        "type": pending.type,
        "owner_id": pending.owner_id,
        "api_key_id": pending.api_key_id,
        "endpoint_id": pending.endpoint_id,
        "created_at": pending.at,
        "body": body_of(pending.type, pending.at, pending.data),
        "dedupe_key": pending.dedupe_key,
        "fanned_out": False,
    }


def emit(session: AsyncSession, pending: PendingEvent) -> str:
    """Add an event to the caller's transaction: it commits with the change it reports, or not at all. Its id (the
    `webhook-id` its deliveries carry)."""
    row = OutboxEvent(**_row(pending))
    session.add(row)
    _wake_after_commit(session)
    return row.event_id


def emit_key_event(session: AsyncSession, event_type: str, row: ApiKey, *, at: datetime) -> None:
    """`emit` for an event about a key, carrying the key object as it stands in this transaction."""
    emit(session, PendingEvent(event_type, row.user_id, key_data(row), at, api_key_id=row.id))


async def emit_once(session: AsyncSession, events: Sequence[PendingEvent]) -> int:
    """Add events that each carry a `dedupe_key`; one whose key was ever written before is skipped, in this process
    or any other (the unique constraint decides, so two processes racing write it once). How many were new."""
    if not events:
        return 0
    assert all(pending.dedupe_key is not None for pending in events)
    known = set(
        await session.scalars(
            select(OutboxEvent.dedupe_key).where(OutboxEvent.dedupe_key.in_([e.dedupe_key for e in events]))
        )
    )
    fresh = [pending for pending in events if pending.dedupe_key not in known]
    written = 0
    for pending in fresh:
        statement = insert_ignoring_conflicts(session, OutboxEvent).values(**_row(pending))
        result = await session.execute(statement)
        written += getattr(result, "rowcount", 0) or 0
    if written:
        _wake_after_commit(session)
    return written


async def emit_many(session: AsyncSession, events: Iterable[PendingEvent]) -> int:
    """Events from a batch (the usage flush's quota and rate-limit alerts): those with a `dedupe_key` once ever,
    the others always. How many were written."""
    events = list(events)
    once = [pending for pending in events if pending.dedupe_key is not None]
    for pending in events:
        if pending.dedupe_key is None:
            emit(session, pending)
    return len(events) - len(once) + await emit_once(session, once)


def insert_ignoring_conflicts(session: AsyncSession, model: Any) -> Any:
    """`INSERT ... ON CONFLICT DO NOTHING` in the session's dialect (PostgreSQL and SQLite both have it)."""
    dialect = session.bind.dialect.name if session.bind is not None else "sqlite"
    if dialect == "postgresql":
        return postgresql.insert(model).on_conflict_do_nothing()
    if dialect == "sqlite":
        return sqlite.insert(model).on_conflict_do_nothing()
    return insert(model)


def install_wakeup(session_factory: async_sessionmaker[AsyncSession], wake: Callable[[], None]) -> None:
    """Let sessions of `session_factory` wake a dispatcher after a commit that emitted events."""
    session_factory.configure(info={_WAKE: wake})


def _wake_after_commit(session: AsyncSession) -> None:
    wake = session.info.get(_WAKE)
    if wake is None or session.info.get(_WAKE_ARMED):
        return
    session.info[_WAKE_ARMED] = True

    def after_commit(_session: Session) -> None:
        session.info.pop(_WAKE_ARMED, None)
        wake()

    event.listen(session.sync_session, "after_commit", after_commit, once=True)
