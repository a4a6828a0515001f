"""The audit log a visitor may see, and the administrators' view of every key."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from keystile.audit import service as audit
from keystile.deps import KeysDep, KeystileDep, SessionDep
from keystile.ui import listing
from keystile.ui.pages import AdminVisitor, PageError, SignedIn, Visitor, render

router = APIRouter()

AUDIT_PAGE_SIZE = 50
MAX_PAGE = 1_000_000


def _page_number(page: str | None, visitor: SignedIn) -> int:
    if page is None or page == "":
        return 1
    if not page.isdigit() or not 1 <= int(page[:8]) <= MAX_PAGE:
        raise PageError(422, "Invalid page", f"Page must be a whole number from 1 to {MAX_PAGE}.", visitor)
    return int(page)


@router.get("/audit", response_class=HTMLResponse)
async def audit_log(request: Request, visitor: Visitor, session: SessionDep, page: str | None = None) -> HTMLResponse:
    number = _page_number(page, visitor)
    events = await audit.list_events(
        session,
        user_id=visitor.user.id,
        is_admin=visitor.user.is_admin,
        limit=AUDIT_PAGE_SIZE + 1,
        offset=(number - 1) * AUDIT_PAGE_SIZE,
    )
    return render(
        request,
        "audit.html",
        visitor,
        events=events[:AUDIT_PAGE_SIZE],
        page=number,
        has_next=len(events) > AUDIT_PAGE_SIZE,
    )


@router.get("/admin/keys", response_class=HTMLResponse)
async def all_keys(
    request: Request, visitor: AdminVisitor, keys: KeysDep, keystile: KeystileDep, page: str | None = None
) -> HTMLResponse:
    listed = await listing.key_page(
        keys, owner_id=None, state=None, unused_for_days=None, page=_page_number(page, visitor), now=keystile.clock()
    )
    return render(request, "admin_keys.html", visitor, listed=listed)
