"""The keys tables: a page of keys (filtered as `KeyManager.list_page` filters), each with its state and identity.

Rows are read through `KeyManager.read`, which adds buffered uses and leased quota exactly as the API shows them.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select

from keystile.identities.models import Identity
from keystile.keys.schemas import KeyRead
from keystile.keys.service import KeyManager, KeyState, key_state
from keystile.ui.pages import one_page

PAGE_SIZE = 25


@dataclass(frozen=True)
class KeyRow:
    key: KeyRead
    state: KeyState
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
    page: int,
    now: datetime,
    state: KeyState | None = None,
    unused_for_days: int | None = None,
    identity_id: int | None = None,
) -> KeyPage:
    """Page `page` (from 1) of keys, newest first; every owner's when `owner_id` is None (admins)."""
    rows, has_next = await one_page(
        lambda limit, offset: keys.list_page(
            owner_id=owner_id,
            limit=limit,
            offset=offset,
            unused_for_days=unused_for_days,
            state=state,
            identity_id=identity_id,
        ),
        page,
        PAGE_SIZE,
    )
    reads = await keys.read(rows)
    names = await identity_names(keys, {read.identity_id for read in reads if read.identity_id is not None})
    return KeyPage(
        rows=[
            KeyRow(read, key_state(read, now), names.get(read.identity_id) if read.identity_id else None)
            for read in reads
        ],
        page=page,
        has_next=has_next,
    )


async def identity_names(keys: KeyManager, identity_ids: set[int]) -> dict[int | None, Any]:
    if not identity_ids:
        return {}
    result = await keys.session.execute(select(Identity.id, Identity.external_id).where(Identity.id.in_(identity_ids)))
    return {identity_id: external_id for identity_id, external_id in result}
