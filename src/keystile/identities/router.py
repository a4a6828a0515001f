"""`/identities`: a user's customers, whose limits their keys share (API.md section 8). Thin, like keys/router.py."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Response, status

from keystile.deps import CurrentUser, IdentityPk, KeystileDep, Limit, Offset, SessionDep
from keystile.identities.schemas import IdentityCreate, IdentityRead, IdentityUpdate
from keystile.identities.service import IdentityManager
from keystile.responses import BEARER_ANSWERS, IDENTITY_NOT_FOUND, Responses

# IdentityNotFoundError becomes 404 and IdentityConflictError 409 in keystile.errors.
router = APIRouter(prefix="/identities", tags=["identities"], responses=BEARER_ANSWERS)


async def _identity_manager(keystile: KeystileDep, session: SessionDep) -> IdentityManager:
    return keystile.identity_manager(session)


IdentitiesDep = Annotated[IdentityManager, Depends(_identity_manager)]
_CONFLICT: Responses = {409: {"description": "The external_id is taken by another of your identities"}}


@router.post("", status_code=status.HTTP_201_CREATED, response_model=IdentityRead, responses=_CONFLICT)
@router.post("/", include_in_schema=False, status_code=status.HTTP_201_CREATED, response_model=IdentityRead)
async def create_identity(spec: IdentityCreate, identities: IdentitiesDep, user: CurrentUser) -> IdentityRead:
    row = await identities.create(owner_id=user.id, spec=spec)
    return identities.read([row])[0]


@router.get("", response_model=list[IdentityRead], summary="Your identities, newest first")
@router.get("/", include_in_schema=False, response_model=list[IdentityRead])
async def list_identities(
    identities: IdentitiesDep, user: CurrentUser, limit: Limit = 50, offset: Offset = 0
) -> list[IdentityRead]:
    return identities.read(await identities.list_page(owner_id=user.id, limit=limit, offset=offset))


@router.get("/{identity_pk}", response_model=IdentityRead, responses=IDENTITY_NOT_FOUND)
async def get_identity(identity_pk: IdentityPk, identities: IdentitiesDep, user: CurrentUser) -> IdentityRead:
    return identities.read([await identities.get(identity_pk, owner_id=user.id)])[0]


@router.patch("/{identity_pk}", response_model=IdentityRead, responses=IDENTITY_NOT_FOUND | _CONFLICT)
async def update_identity(
    identity_pk: IdentityPk, changes: IdentityUpdate, identities: IdentitiesDep, user: CurrentUser
) -> IdentityRead:
    row = await identities.get(identity_pk, owner_id=user.id, for_update=True)
    await identities.update(row, changes)
    return identities.read([row])[0]


@router.delete(
    "/{identity_pk}",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    responses=IDENTITY_NOT_FOUND | {409: {"description": "Keys still belong to this identity"}},
)
async def delete_identity(identity_pk: IdentityPk, identities: IdentitiesDep, user: CurrentUser) -> Response:
    row = await identities.get(identity_pk, owner_id=user.id, for_update=True)
    await identities.delete(row)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
