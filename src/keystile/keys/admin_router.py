"""Administrators see and revoke every user's keys."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from keystile.deps import AdminUser, ClientIP, RuntimeDep, SessionDep, ip_text
from keystile.keys import service
from keystile.keys.router import MAX_ID, KeyPk, Limit, Offset, read_keys, revoke_and_read
from keystile.keys.schemas import KeyRead

router = APIRouter(prefix="/admin", tags=["admin"], responses={403: {"description": "Not an admin"}})


@router.get("/keys", response_model=list[KeyRead], summary="All keys, newest first")
async def list_all_keys(
    runtime: RuntimeDep,
    session: SessionDep,
    _admin: AdminUser,
    limit: Limit = 50,
    offset: Offset = 0,
    owner_id: Annotated[int | None, Query(ge=1, le=MAX_ID)] = None,
) -> list[KeyRead]:
    rows = await service.list_keys(session, owner_id=owner_id, limit=limit, offset=offset)
    return await read_keys(runtime, session, rows)


@router.post("/keys/{key_pk}/revoke", response_model=KeyRead, responses={404: {"description": "No such key"}})
async def admin_revoke_key(
    key_pk: KeyPk, runtime: RuntimeDep, session: SessionDep, admin: AdminUser, ip: ClientIP
) -> KeyRead:
    return await revoke_and_read(runtime, session, key_pk=key_pk, owner_id=None, actor_id=admin.id, ip=ip_text(ip))
