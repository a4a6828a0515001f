"""Identities: the list, the create form, and the edit form, each change one `IdentityManager` call."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response

from keystile.db import MAX_ID
from keystile.deps import KeystileDep, SessionDep
from keystile.identities.models import Identity
from keystile.identities.service import IdentityConflictError, IdentityManager, IdentityNotFoundError
from keystile.ui import forms
from keystile.ui.pages import FormVisitor, PageError, SignedIn, Visitor, render, see_other

router = APIRouter()


def _form_values(request_form: dict[str, object]) -> dict[str, str]:
    return {name: value for name, value in request_form.items() if isinstance(value, str) and name != "csrf_token"}


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
        return _invalid(request, visitor, None, invalid.errors, _form_values(dict(form)))
    except IdentityConflictError as conflict:
        return _invalid(request, visitor, None, {"external_id": str(conflict)}, _form_values(dict(form)))
    return see_other("/ui/identities")


async def _owned(manager: IdentityManager, identity_id: int, visitor: SignedIn) -> Identity:
    if not 1 <= identity_id <= MAX_ID:
        raise PageError(404, "Not found", "No such identity.", visitor)
    try:
        return await manager.get(identity_id, owner_id=visitor.user.id)
    except IdentityNotFoundError:
        raise PageError(404, "Not found", "No such identity.", visitor) from None


@router.get("/identities/{identity_id}", response_class=HTMLResponse)
async def edit_identity_form(
    request: Request, identity_id: int, visitor: Visitor, keystile: KeystileDep, session: SessionDep
) -> HTMLResponse:
    manager = keystile.identity_manager(session)
    identity = manager.read([await _owned(manager, identity_id, visitor)])[0]
    values = {
        "external_id": identity.external_id,
        "rate_limit": str(identity.rate_limit.limit) if identity.rate_limit else "",
        "window_seconds": str(identity.rate_limit.window_seconds) if identity.rate_limit else "",
        "quota": "" if identity.quota_remaining is None else str(identity.quota_remaining),
    }
    return render(request, "identity_form.html", visitor, identity=identity, errors={}, values=values)


@router.post("/identities/{identity_id}", response_class=HTMLResponse)
async def edit_identity(
    request: Request, identity_id: int, visitor: FormVisitor, keystile: KeystileDep, session: SessionDep
) -> Response:
    manager = keystile.identity_manager(session)
    row = await _owned(manager, identity_id, visitor)
    identity = manager.read([row])[0]
    form = await request.form()
    try:
        await manager.update(row, forms.identity_changes_from_form(form))
    except forms.FormInvalid as invalid:
        return _invalid(request, visitor, identity, invalid.errors, _form_values(dict(form)))
    except IdentityConflictError as conflict:
        return _invalid(request, visitor, identity, {"external_id": str(conflict)}, _form_values(dict(form)))
    return see_other("/ui/identities")


def _invalid(
    request: Request, visitor: SignedIn, identity: object, errors: dict[str, str], values: dict[str, str]
) -> HTMLResponse:
    return render(
        request, "identity_form.html", visitor, status_code=422, identity=identity, errors=errors, values=values
    )
