"""The keys table: a page of keys filtered by state and staleness, with each key's identity named.

`KeyManager.list_page` has no state filter, so the page is selected here (a read, like the manager's own) and then
read through `KeyManager.read`, which adds buffered uses and leased quota exactly as the API shows them.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, and_, func, or_, select

from keystile.identities.models import Identity
from keystile.keys.models import ApiKey
from keystile.keys.schemas import KeyRead
from keystile.keys.service import KeyManager

PAGE_SIZE = 25
STATES = ("Active", "Disabled", "Expired", "Revoked")


def state_of(key: KeyRead, now: datetime) -> str:
    """One word for a key, the first that holds: Revoked (final), Expired, Disabled (a pause), Active."""
    if not key.is_active:
        return "Revoked"
    if key.expires_at is not None and key.expires_at <= now:
        return "Expired"
    if not key.enabled:
        return "Disabled"
    return "Active"


def _state_condition(state: str, now: datetime) -> ColumnElement[bool]:
    unexpired = or_(ApiKey.expires_at.is_(None), ApiKey.expires_at > now)
    conditions: dict[str, ColumnElement[bool]] = {
        "Revoked": ApiKey.is_active.is_(False),
        "Expired": and_(ApiKey.is_active.is_(True), ApiKey.expires_at <= now),
        "Disabled": and_(ApiKey.is_active.is_(True), unexpired, ApiKey.enabled.is_(False)),
        "Active": and_(ApiKey.is_active.is_(True), unexpired, ApiKey.enabled.is_(True)),
    }
    return conditions[state]


@dataclass(frozen=True)
class KeyRow:
    key: KeyRead
    state: str
    identity: str | None


@dataclass(frozen=True)
class KeyPage:
    rows: list[KeyRow]
    page: int
    has_next: bool


async def key_page(
    keys: KeyManager,
    *,
    owner_id: int | None,
    state: str | None,
    unused_for_days: int | None,
    page: int,
    now: datetime,
) -> KeyPage:
    """Page `page` (from 1) of keys, newest first; every owner's when `owner_id` is None (admins)."""
    query = select(ApiKey).order_by(ApiKey.id.desc()).limit(PAGE_SIZE + 1).offset((page - 1) * PAGE_SIZE)
    if owner_id is not None:
        query = query.where(ApiKey.user_id == owner_id)
    if state is not None:
        query = query.where(_state_condition(state, now))
    if unused_for_days is not None:
        await keys.usage.flush()  # a key used moments ago in this process is not stale
        cutoff = now - timedelta(days=unused_for_days)
        query = query.where(func.coalesce(ApiKey.last_used_at, ApiKey.created_at) <= cutoff)
    rows = list((await keys.session.scalars(query)).all())
    reads = await keys.read(rows[:PAGE_SIZE])
    names = await identity_names(keys, {read.identity_id for read in reads if read.identity_id is not None})
    return KeyPage(
        rows=[
            KeyRow(read, state_of(read, now), names.get(read.identity_id) if read.identity_id else None)
            for read in reads
        ],
        page=page,
        has_next=len(rows) > PAGE_SIZE,
    )


async def identity_names(keys: KeyManager, identity_ids: set[int]) -> dict[int | None, Any]:
    if not identity_ids:
        return {}
    result = await keys.session.execute(select(Identity.id, Identity.external_id).where(Identity.id.in_(identity_ids)))
    return {identity_id: external_id for identity_id, external_id in result}
