"""The audit log a visitor may see: their own keys' and account's events, every event for administrators."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from keystile.audit import service as audit
from keystile.deps import SessionDep
from keystile.ui.pages import Visitor, one_page, page_number, render

router = APIRouter()

AUDIT_PAGE_SIZE = 50


@router.get("/audit", response_class=HTMLResponse)
async def audit_log(request: Request, visitor: Visitor, session: SessionDep, page: str | None = None) -> HTMLResponse:
    number = page_number(page, visitor)
    events, has_next = await one_page(
        lambda limit, offset: audit.list_events(
            session, user_id=visitor.user.id, is_admin=visitor.user.is_admin, limit=limit, offset=offset
        ),
        number,
        AUDIT_PAGE_SIZE,
    )
    return render(request, "audit.html", visitor, events=events, page=number, has_next=has_next)
