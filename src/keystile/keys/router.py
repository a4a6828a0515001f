from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any

from fastapi import APIRouter, Body, HTTPException, Path, Query, Response, status
from fastapi.exceptions import RequestValidationError
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from keystile.deps import ClientIP, CurrentUser, RuntimeDep, SessionDep, ip_text
from keystile.keys import service
from keystile.keys.models import ApiKey
from keystile.keys.schemas import KeyCreate, KeyCreated, KeyRead, KeyUpdate, Name, RotateRequest
from keystile.runtime import Keystile

router = APIRouter(prefix="/keys", tags=["keys"])

_NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"description": "No such key, or not yours"}}
Limit = Annotated[int, Query(ge=1, le=100)]
# Integer ids are 32-bit in PostgreSQL: a larger one would fail in the driver (a 500) instead of being "not found".
MAX_ID = 2**31 - 1
KeyPk = Annotated[int, Path(ge=1, le=MAX_ID, description="The key's integer id")]
Offset = Annotated[int, Query(ge=0, le=2**31)]


def key_not_found() -> HTTPException:
    return HTTPException(status.HTTP_404_NOT_FOUND, detail="API key not found")


def validation_error(field_name: str, message: str) -> RequestValidationError:
    return RequestValidationError([{"type": "value_error", "loc": ("body", field_name), "msg": message}])


async def read_keys(runtime: Keystile, session: AsyncSession, rows: Sequence[ApiKey]) -> list[KeyRead]:
    """Keys as stored, plus what this process holds in memory: buffered uses and unspent quota leases.

    A key in its rotation grace spends its successor's quota, so its balance is read from that row (one query for
    the whole page).
    """
    holder_ids = {row.quota_key_id for row in rows if row.quota_key_id is not None}
    shared_balances: dict[int, int | None] = {}
    if holder_ids:
        result = await session.execute(select(ApiKey.id, ApiKey.quota_remaining).where(ApiKey.id.in_(holder_ids)))
        shared_balances = {holder_id: balance for holder_id, balance in result.all()}
    return [_read_key(runtime, row, shared_balances) for row in rows]


async def read_key(runtime: Keystile, session: AsyncSession, row: ApiKey) -> KeyRead:
    return (await read_keys(runtime, session, [row]))[0]


def _read_key(runtime: Keystile, row: ApiKey, shared_balances: dict[int, int | None]) -> KeyRead:
    overrides: dict[str, Any] = {}
    holder_id = row.quota_key_id or row.id
    balance = shared_balances.get(holder_id) if row.quota_key_id is not None else row.quota_remaining
    if balance is not None:
        overrides["quota_remaining"] = balance + runtime.quotas.local_balance(holder_id)
    pending = runtime.usage.pending_for(row.id)
    if pending is not None:
        last_used = max(row.last_used_at, pending.last_used_at) if row.last_used_at else pending.last_used_at
        overrides |= {"use_count": row.use_count + pending.count, "last_used_at": last_used}
    return KeyRead.from_row(row, **overrides)


@router.post(
    "/",
    status_code=status.HTTP_201_CREATED,
    response_model=KeyCreated,
    summary="Issue a key (the raw key is in this response only)",
    description="Give `?name=` (as in the lesson) or a JSON body, not both. Sent with `Cache-Control: no-store`.",
)
@router.post("", include_in_schema=False, status_code=status.HTTP_201_CREATED, response_model=KeyCreated)
async def create_key(
    response: Response,
    runtime: RuntimeDep,
    session: SessionDep,
    user: CurrentUser,
    ip: ClientIP,
    name: Annotated[Name | None, Query()] = None,
    body: Annotated[KeyCreate | None, Body()] = None,
) -> KeyCreated:
    if (name is None) == (body is None):
        raise validation_error("name", "give the name as ?name= or a JSON body, exactly one of them")
    spec = body if body is not None else KeyCreate(name=name)
    try:
        issued = await service.create_key(
            session,
            owner_id=user.id,
            spec=spec,
            prefix=runtime.settings.key_prefix,
            pepper=runtime.pepper,
            now=runtime.clock(),
            ip=ip_text(ip),
        )
    except service.InvalidKeySettingsError as error:
        raise validation_error(error.field_name, str(error)) from None
    await session.commit()
    response.headers["Cache-Control"] = "no-store"
    return KeyCreated(**KeyRead.from_row(issued.row).model_dump(), key=issued.raw)


@router.get("/", response_model=list[KeyRead], summary="Your keys, newest first")
async def list_keys(
    runtime: RuntimeDep, session: SessionDep, user: CurrentUser, limit: Limit = 50, offset: Offset = 0
) -> list[KeyRead]:
    rows = await service.list_keys(session, owner_id=user.id, limit=limit, offset=offset)
    return await read_keys(runtime, session, rows)


@router.get("/{key_pk}", response_model=KeyRead, responses=_NOT_FOUND)
async def get_key(key_pk: KeyPk, runtime: RuntimeDep, session: SessionDep, user: CurrentUser) -> KeyRead:
    try:
        row = await service.get_key(session, key_pk=key_pk, owner_id=user.id)
    except service.KeyNotFoundError:
        raise key_not_found() from None
    return await read_key(runtime, session, row)


@router.patch(
    "/{key_pk}",
    response_model=KeyRead,
    responses=_NOT_FOUND | {409: {"description": "Expiry or quota of a key that was rotated"}},
)
async def update_key(
    key_pk: KeyPk, changes: KeyUpdate, runtime: RuntimeDep, session: SessionDep, user: CurrentUser, ip: ClientIP
) -> KeyRead:
    row = await _key_for_update(session, key_pk, user.id)
    try:
        await service.update_key(session, row, changes=changes, actor_id=user.id, now=runtime.clock(), ip=ip_text(ip))
    except service.InvalidKeySettingsError as error:
        raise validation_error(error.field_name, str(error)) from None
    except service.KeyStateConflictError as error:
        raise HTTPException(status.HTTP_409_CONFLICT, detail=str(error)) from None
    await session.commit()
    await runtime.key_changed(row.key_id, row.id)
    return await read_key(runtime, session, row)


@router.post(
    "/{key_pk}/rotate",
    status_code=status.HTTP_201_CREATED,
    response_model=KeyCreated,
    responses=_NOT_FOUND | {409: {"description": "The key is revoked, expired or already rotated"}},
    summary="Replace a key with a new one; the old one works for grace_seconds more",
)
async def rotate_key(
    key_pk: KeyPk,
    response: Response,
    runtime: RuntimeDep,
    session: SessionDep,
    user: CurrentUser,
    ip: ClientIP,
    body: Annotated[RotateRequest | None, Body()] = None,
) -> KeyCreated:
    row = await _key_for_update(session, key_pk, user.id)
    try:
        issued = await service.rotate_key(
            session,
            row,
            grace_seconds=(body or RotateRequest()).grace_seconds,
            unspent_quota_lease=runtime.quotas.local_balance(row.id),
            prefix=runtime.settings.key_prefix,
            pepper=runtime.pepper,
            actor_id=user.id,
            now=runtime.clock(),
            ip=ip_text(ip),
        )
    except service.KeyStateConflictError as error:
        raise HTTPException(status.HTTP_409_CONFLICT, detail=str(error)) from None
    await session.commit()
    for key_id, api_key_id in [(row.key_id, row.id), *issued.also_changed]:
        await runtime.key_changed(key_id, api_key_id)
    response.headers["Cache-Control"] = "no-store"
    return KeyCreated(**KeyRead.from_row(issued.row).model_dump(), key=issued.raw)


async def _key_for_update(session: AsyncSession, key_pk: int, owner_id: int | None) -> ApiKey:
    """The key, locked for the change, if `owner_id` owns it (None: any owner, for admins); else 404."""
    try:
        return await service.get_key(session, key_pk=key_pk, owner_id=owner_id, for_update=True)
    except service.KeyNotFoundError:
        raise key_not_found() from None


@router.post("/{key_pk}/revoke", response_model=KeyRead, responses=_NOT_FOUND)
async def revoke_key(
    key_pk: KeyPk, runtime: RuntimeDep, session: SessionDep, user: CurrentUser, ip: ClientIP
) -> KeyRead:
    return await revoke_and_read(runtime, session, key_pk=key_pk, owner_id=user.id, actor_id=user.id, ip=ip_text(ip))


async def revoke_and_read(
    runtime: Keystile,
    session: AsyncSession,
    *,
    key_pk: int,
    owner_id: int | None,
    actor_id: int,
    ip: str | None,
) -> KeyRead:
    """Shared by the owner's and the admin's revoke: they differ only in whose keys they may reach."""
    row = await _key_for_update(session, key_pk, owner_id)
    await service.revoke_key(session, row, actor_id=actor_id, now=runtime.clock(), ip=ip)
    await session.commit()
    await runtime.key_changed(row.key_id, row.id)
    return await read_key(runtime, session, row)
