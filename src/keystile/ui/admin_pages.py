"""The administrators' pages: every key (with a revoke for any of them) and every user. Others get a 403 page."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response

from keystile.deps import ClientIP, KeysDep, KeystileDep, SessionDep, ip_text
from keystile.ui import listing
from keystile.ui.key_pages import find_key, revoke_confirmation
from keystile.ui.pages import AdminFormVisitor, AdminVisitor, confirmed, one_page, page_number, render, see_other
from keystile.users import service as users_service

router = APIRouter()

USERS_PAGE_SIZE = 50


@router.get("/admin/keys", response_class=HTMLResponse)
async def all_keys(
    request: Request, visitor: AdminVisitor, keys: KeysDep, keystile: KeystileDep, page: str | None = None
) -> HTMLResponse:
    listed = await listing.key_page(keys, owner_id=None, page=page_number(page, visitor), now=keystile.clock())
    return render(request, "admin_keys.html", visitor, listed=listed)


@router.post("/admin/keys/{key_pk}/revoke", response_class=HTMLResponse)
async def admin_revoke_key(
    request: Request, key_pk: int, visitor: AdminFormVisitor, keys: KeysDep, ip: ClientIP
) -> Response:
    """Any user's key, as `POST /admin/keys/{id}/revoke`: the audit event names the administrator as the actor.
    Without `confirm=yes`, only the confirmation page."""
    row = await find_key(keys, key_pk, visitor, owner_id=None, for_update=True)
    if not confirmed(await request.form()):
        return revoke_confirmation(
            request, visitor, row, action=f"/ui/admin/keys/{key_pk}/revoke", back="/ui/admin/keys"
        )
    await keys.revoke(row, actor_id=visitor.user.id, ip=ip_text(ip))
    return see_other("/ui/admin/keys")


@router.get("/admin/users", response_class=HTMLResponse)
async def all_users(
    request: Request, visitor: AdminVisitor, session: SessionDep, page: str | None = None
) -> HTMLResponse:
    number = page_number(page, visitor)
    users, has_next = await one_page(
        lambda limit, offset: users_service.list_with_key_counts(session, limit=limit, offset=offset),
        number,
        USERS_PAGE_SIZE,
    )
    return render(request, "admin_users.html", visitor, users=users, page=number, has_next=has_next)
