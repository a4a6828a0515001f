"""Administrators see and revoke every user's keys."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from keystile.db import MAX_ID
from keystile.deps import AdminUser, ClientIP, KeyPk, KeysDep, Limit, Offset, UnusedForDays, ip_text
from keystile.keys.schemas import KeyRead
from keystile.responses import ADMIN_ANSWERS, KEY_NOT_FOUND

router = APIRouter(prefix="/admin", tags=["admin"], responses=ADMIN_ANSWERS)


@router.get("/keys", response_model=list[KeyRead], summary="All keys, newest first")
async def list_all_keys(
    keys: KeysDep,
    _admin: AdminUser,
    limit: Limit = 50,
    offset: Offset = 0,
    owner_id: Annotated[int | None, Query(ge=1, le=MAX_ID)] = None,
    unused_for_days: UnusedForDays = None,
) -> list[KeyRead]:
    rows = await keys.list_page(owner_id=owner_id, limit=limit, offset=offset, unused_for_days=unused_for_days)
    return await keys.read(rows)


@router.post("/keys/{key_pk}/revoke", response_model=KeyRead, responses=KEY_NOT_FOUND)
async def admin_revoke_key(key_pk: KeyPk, keys: KeysDep, admin: AdminUser, ip: ClientIP) -> KeyRead:
    row = await keys.get(key_pk, owner_id=None, for_update=True)
    await keys.revoke(row, actor_id=admin.id, ip=ip_text(ip))
    return await keys.read_one(row)
