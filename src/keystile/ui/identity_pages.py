"""Identities: the list, the create form, and an identity's page (its keys, its usage, its edit form); each change is
one `IdentityManager` call."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response

from keystile.db import MAX_ID
from keystile.deps import KeysDep, KeystileDep, SessionDep
from keystile.identities.models import Identity
from keystile.identities.schemas import IdentityRead
from keystile.identities.service import IdentityConflictError, IdentityManager, IdentityNotFoundError
from keystile.keys.service import KeyManager
from keystile.ui import forms, listing
from keystile.ui.pages import FormVisitor, PageError, SignedIn, Visitor, page_number, render, see_other
from keystile.ui.usage_charts import identity_charts

router = APIRouter()


@router.get("/identities", response_class=HTMLResponse)
async def identities_list(
    request: Request, visitor: Visitor, keystile: KeystileDep, session: SessionDep
) -> HTMLResponse:
    manager = keystile.identity_manager(session)
    rows = await manager.list_page(owner_id=visitor.user.id, limit=100, offset=0)
    return render(request, "identities.html", visitor, identities=manager.read(rows))


@router.get("/identities/new", response_class=HTMLResponse)
async def new_identity(request: Request, visitor: Visitor) -> HTMLResponse:
    return render(request, "identity_form.html", visitor, identity=None, errors={}, values={})


@router.post("/identities/new", response_class=HTMLResponse)
async def create_identity(
    request: Request, visitor: FormVisitor, keystile: KeystileDep, session: SessionDep
) -> Response:
    form = await request.form()
    try:
        spec = forms.identity_from_form(form)
        await keystile.identity_manager(session).create(owner_id=visitor.user.id, spec=spec)
    except forms.FormInvalid as invalid:
        return _create_invalid(request, visitor, invalid.errors, forms.typed_values(form))
    except IdentityConflictError as conflict:
        return _create_invalid(request, visitor, {"external_id": str(conflict)}, forms.typed_values(form))
    return see_other("/ui/identities")


def _create_invalid(
    request: Request, visitor: SignedIn, errors: dict[str, str], values: dict[str, str]
) -> HTMLResponse:
    return render(request, "identity_form.html", visitor, status_code=422, identity=None, errors=errors, values=values)


async def _owned(manager: IdentityManager, identity_id: int, visitor: SignedIn) -> Identity:
    if not 1 <= identity_id <= MAX_ID:
        raise PageError(404, "Not found", "No such identity.", visitor)
    try:
        return await manager.get(identity_id, owner_id=visitor.user.id)
    except IdentityNotFoundError:
        raise PageError(404, "Not found", "No such identity.", visitor) from None


async def _identity_page(
    request: Request,
    visitor: SignedIn,
    keystile: KeystileDep,
    keys: KeyManager,
    identity: IdentityRead,
    *,
    page: int = 1,
    errors: dict[str, str] | None = None,
    values: dict[str, str] | None = None,
) -> HTMLResponse:
    """The identity's keys (a page of them), its usage charts and its edit form (with `errors`: 422)."""
    now = keystile.clock()
    listed = await listing.key_page(keys, owner_id=visitor.user.id, identity_id=identity.id, page=page, now=now)
    if values is None:
        values = {
            "external_id": identity.external_id,
            "rate_limit": str(identity.rate_limit.limit) if identity.rate_limit else "",
            "window_seconds": str(identity.rate_limit.window_seconds) if identity.rate_limit else "",
            "quota": "" if identity.quota_remaining is None else str(identity.quota_remaining),
        }
    return render(
        request,
        "identity_form.html",
        visitor,
        status_code=422 if errors else 200,
        identity=identity,
        listed=listed,
        charts=await identity_charts(keystile, keys.session, identity.id, now=now),
        errors=errors or {},
        values=values,
    )


@router.get("/identities/{identity_id}", response_class=HTMLResponse)
async def identity_detail(
    request: Request,
    identity_id: int,
    visitor: Visitor,
    keystile: KeystileDep,
    keys: KeysDep,
    page: str | None = None,
) -> HTMLResponse:
    manager = keystile.identity_manager(keys.session)
    identity = manager.read([await _owned(manager, identity_id, visitor)])[0]
    return await _identity_page(request, visitor, keystile, keys, identity, page=page_number(page, visitor))


@router.post("/identities/{identity_id}", response_class=HTMLResponse)
async def edit_identity(
    request: Request, identity_id: int, visitor: FormVisitor, keystile: KeystileDep, keys: KeysDep
) -> Response:
    manager = keystile.identity_manager(keys.session)
    row = await _owned(manager, identity_id, visitor)
    identity = manager.read([row])[0]
    form = await request.form()
    try:
        await manager.update(row, forms.identity_changes_from_form(form))
    except forms.FormInvalid as invalid:
        errors = invalid.errors
    except IdentityConflictError as conflict:
        errors = {"external_id": str(conflict)}
    else:
        return see_other("/ui/identities")
    return await _identity_page(
        request, visitor, keystile, keys, identity, errors=errors, values=forms.typed_values(form)
    )
