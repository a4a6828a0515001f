"""`/keys`: a user's own keys. Thin: parse, call the KeyManager, map its errors to status codes."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Query, Response, status

from keystile.deps import ClientIP, CurrentUser, KeyPk, KeysDep, Limit, Offset, UnusedForDays, ip_text
from keystile.errors import validation_error
from keystile.keys.schemas import KeyCreate, KeyCreated, KeyRead, KeyUpdate, Name, RotateRequest
from keystile.keys.service import IssuedKey
from keystile.responses import BEARER_ANSWERS, IDENTITY_NOT_FOUND, KEY_NOT_FOUND

# The service's errors become responses in keystile.errors: KeyNotFoundError 404, KeyStateConflictError 409,
# InvalidKeySettingsError 422. Every route reads the caller's account: 401 without a valid bearer token, 503 while the
# database is unavailable.
router = APIRouter(prefix="/keys", tags=["keys"], responses=BEARER_ANSWERS)

# OpenAPI links: what a client (or a stateful fuzzer) can do next with the key a 201 describes.
_KEY_LINKS = {
    "GetKey": "#/paths/~1keys~1{key_pk}/get",
    "UpdateKey": "#/paths/~1keys~1{key_pk}/patch",
    "RevokeKey": "#/paths/~1keys~1{key_pk}~1revoke/post",
    "RotateKey": "#/paths/~1keys~1{key_pk}~1rotate/post",
}
_ISSUED: dict[int | str, dict[str, Any]] = {
    201: {
        "links": {
            name: {"operationRef": target, "parameters": {"key_pk": "$response.body#/id"}}
            for name, target in _KEY_LINKS.items()
        }
    }
}


def _reveal(issued: IssuedKey, response: Response) -> KeyCreated:
    """The one response that carries a raw key: never stored by a cache on the way."""
    response.headers["Cache-Control"] = "no-store"
    return KeyCreated(**KeyRead.from_row(issued.row).model_dump(), key=issued.raw)


@router.post(
    "/",
    status_code=status.HTTP_201_CREATED,
    response_model=KeyCreated,
    summary="Issue a key (the raw key is in this response only)",
    description="Give `?name=` (as in the lesson) or a JSON body, not both. Sent with `Cache-Control: no-store`.",
    responses=_ISSUED | IDENTITY_NOT_FOUND,
)
@router.post("", include_in_schema=False, status_code=status.HTTP_201_CREATED, response_model=KeyCreated)
async def create_key(
    response: Response,
    keys: KeysDep,
    user: CurrentUser,
    ip: ClientIP,
    name: Annotated[Name | None, Query()] = None,
    body: Annotated[KeyCreate | None, Body()] = None,
) -> KeyCreated:
    if (name is None) == (body is None):
        raise validation_error("name", "give the name as ?name= or a JSON body, exactly one of them")
    spec = body if body is not None else KeyCreate(name=name)
    issued = await keys.create(owner_id=user.id, spec=spec, ip=ip_text(ip))
    return _reveal(issued, response)


@router.get("/", response_model=list[KeyRead], summary="Your keys, newest first")
async def list_keys(
    keys: KeysDep, user: CurrentUser, limit: Limit = 50, offset: Offset = 0, unused_for_days: UnusedForDays = None
) -> list[KeyRead]:
    rows = await keys.list_page(owner_id=user.id, limit=limit, offset=offset, unused_for_days=unused_for_days)
    return await keys.read(rows)


@router.get("/{key_pk}", response_model=KeyRead, responses=KEY_NOT_FOUND)
async def get_key(key_pk: KeyPk, keys: KeysDep, user: CurrentUser) -> KeyRead:
    return await keys.read_one(await keys.get(key_pk, owner_id=user.id))


@router.patch(
    "/{key_pk}",
    response_model=KeyRead,
    responses=KEY_NOT_FOUND | {409: {"description": "Expiry or quota of a key that was rotated"}},
)
async def update_key(key_pk: KeyPk, changes: KeyUpdate, keys: KeysDep, user: CurrentUser, ip: ClientIP) -> KeyRead:
    row = await keys.get(key_pk, owner_id=user.id, for_update=True)
    await keys.update(row, changes, actor_id=user.id, ip=ip_text(ip))
    return await keys.read_one(row)


@router.post(
    "/{key_pk}/rotate",
    status_code=status.HTTP_201_CREATED,
    response_model=KeyCreated,
    responses=KEY_NOT_FOUND | {409: {"description": "The key is revoked, expired or already rotated"}} | _ISSUED,
    summary="Replace a key with a new one; the old one works for grace_seconds more",
)
async def rotate_key(
    key_pk: KeyPk,
    response: Response,
    keys: KeysDep,
    user: CurrentUser,
    ip: ClientIP,
    body: Annotated[RotateRequest | None, Body()] = None,
) -> KeyCreated:
    row = await keys.get(key_pk, owner_id=user.id, for_update=True)
    grace_seconds = (body or RotateRequest()).grace_seconds
    issued = await keys.rotate(row, grace_seconds=grace_seconds, actor_id=user.id, ip=ip_text(ip))
    return _reveal(issued, response)


@router.post("/{key_pk}/revoke", response_model=KeyRead, responses=KEY_NOT_FOUND)
async def revoke_key(key_pk: KeyPk, keys: KeysDep, user: CurrentUser, ip: ClientIP) -> KeyRead:
    row = await keys.get(key_pk, owner_id=user.id, for_update=True)
    await keys.revoke(row, actor_id=user.id, ip=ip_text(ip))
    return await keys.read_one(row)
