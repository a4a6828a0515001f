from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from keystile.audit.models import AuditEvent
from keystile.keys.models import ApiKey


def record(
    session: AsyncSession,
    *,
    at: datetime,
    action: str,
    actor_id: int | None,
    api_key_id: int | None = None,
    ip: str | None = None,
    detail: dict[str, Any] | None = None,
) -> None:
    """Add an event to the caller's transaction: it commits with the change it records, or not at all."""
    session.add(AuditEvent(at=at, action=action, actor_id=actor_id, api_key_id=api_key_id, ip=ip, detail=detail or {}))


async def list_events(
    session: AsyncSession, *, user_id: int, is_admin: bool, limit: int, offset: int
) -> list[AuditEvent]:
    query = select(AuditEvent).order_by(AuditEvent.id.desc()).limit(limit).offset(offset)
    if not is_admin:
        own_keys = select(ApiKey.id).where(ApiKey.user_id == user_id)
        query = query.where(or_(AuditEvent.actor_id == user_id, AuditEvent.api_key_id.in_(own_keys)))
    return list((await session.scalars(query)).all())
