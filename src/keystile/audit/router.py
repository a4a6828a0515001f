from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic import BaseModel, ConfigDict

from keystile.audit import service
from keystile.deps import CurrentUser, SessionDep
from keystile.responses import BEARER_ANSWERS

router = APIRouter(tags=["audit"])


class AuditEventRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    at: datetime
    actor_id: int | None
    action: str
    api_key_id: int | None
    ip: str | None
    detail: dict[str, Any]


@router.get(
    "/audit", response_model=list[AuditEventRead], summary="Audit events, newest first", responses=BEARER_ANSWERS
)
async def list_audit_events(
    session: SessionDep,
    user: CurrentUser,
    limit: Annotated[int, Query(ge=1, le=100)] = 50,
    offset: Annotated[int, Query(ge=0, le=2**31)] = 0,
) -> list[AuditEventRead]:
    events = await service.list_events(session, user_id=user.id, is_admin=user.is_admin, limit=limit, offset=offset)
    return [AuditEventRead.model_validate(event) for event in events]
