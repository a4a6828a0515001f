"""The keys pages: the table, the create form and its one-time reveal, a key's page and its actions.

Every change is one `KeyManager` call (the path the API takes): the page parses the form, calls, and renders.
"""

from __future__ import annotations

import secrets

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response

from keystile.db import MAX_ID
from keystile.deps import ClientIP, KeysDep, KeystileDep, SessionDep, ip_text
from keystile.identities.service import IdentityNotFoundError
from keystile.keys.models import ApiKey
from keystile.keys.schemas import KeyUpdate
from keystile.keys.service import (
    KEY_STATES,
    IssuedKey,
    KeyManager,
    KeyNotFoundError,
    KeyState,
    KeyStateConflictError,
    key_state,
)
from keystile.ui import forms, listing, sessions
from keystile.ui.pages import (
    FormVisitor,
    PageError,
    SignedIn,
    Visitor,
    confirmation,
    confirmed,
    page_number,
    render,
    see_other,
)
from keystile.ui.usage_charts import key_charts

router = APIRouter()

MAX_UNUSED_DAYS = 3650


def _bounded(value: str | None, name: str, low: int, high: int, visitor: SignedIn) -> int | None:
    if value is None or value == "":
        return None
    if not value.isdigit() or not low <= int(value[:12]) <= high:
        raise PageError(422, "Invalid filter", f"{name} must be a whole number from {low} to {high}.", visitor)
    return int(value)


def _state(value: str | None, visitor: SignedIn) -> KeyState | None:
    if value is None or value == "":
        return None
    if value not in KEY_STATES:
        raise PageError(422, "Invalid filter", "Choose a state from the list.", visitor)
    return value


@router.get("/keys", response_class=HTMLResponse)
async def keys_table(
    request: Request,
    visitor: Visitor,
    keys: KeysDep,
    keystile: KeystileDep,
    state: str | None = None,
    unused_for_days: str | None = None,
    page: str | None = None,
) -> HTMLResponse:
    chosen = _state(state, visitor)
    unused = _bounded(unused_for_days, "Unused for (days)", 1, MAX_UNUSED_DAYS, visitor)
    number = page_number(page, visitor)
    listed = await listing.key_page(
        keys, owner_id=visitor.user.id, state=chosen, unused_for_days=unused, page=number, now=keystile.clock()
    )
    filters = {"state": chosen or "", "unused_for_days": unused or ""}
    return render(request, "keys.html", visitor, listed=listed, filters=filters, states=KEY_STATES)


async def _new_key_form(
    request: Request, visitor: SignedIn, keystile: KeystileDep, session: SessionDep, **context: object
) -> HTMLResponse:
    identities = await keystile.identity_manager(session).list_page(owner_id=visitor.user.id, limit=100, offset=0)
    status_code = 422 if context.get("errors") else 200
    return render(
        request,
        "key_new.html",
        visitor,
        status_code=status_code,
        form_id=secrets.token_urlsafe(16),
        expiries=list(forms.EXPIRIES),
        identities=identities,
        **({"errors": {}, "values": {}} | context),
    )


@router.get("/keys/new", response_class=HTMLResponse)
async def new_key(request: Request, visitor: Visitor, keystile: KeystileDep, session: SessionDep) -> HTMLResponse:
    return await _new_key_form(request, visitor, keystile, session)


@router.post("/keys/new", response_class=HTMLResponse)
async def create_key(
    request: Request, visitor: FormVisitor, keys: KeysDep, keystile: KeystileDep, session: SessionDep, ip: ClientIP
) -> HTMLResponse:
    form = await request.form()
    try:
        spec = forms.key_from_form(form)
    except forms.FormInvalid as invalid:
        values = forms.typed_values(form)
        return await _new_key_form(request, visitor, keystile, session, errors=invalid.errors, values=values)
    form_id = form.get("form_id")
    if not await sessions.spend_form(session, visitor.session_id, form_id if isinstance(form_id, str) else ""):
        raise PageError(
            409,
            "Already created",
            "This form was already submitted. The key it created is shown only once: see it in your keys.",
            visitor,
        )
    try:
        issued = await keys.create(owner_id=visitor.user.id, spec=spec, ip=ip_text(ip))
    except IdentityNotFoundError:
        raise PageError(404, "Not found", "That identity does not exist.", visitor) from None
    return await _reveal(request, visitor, keys, issued, title="Key created")


async def _reveal(
    request: Request, visitor: SignedIn, keys: KeyManager, issued: IssuedKey, *, title: str
) -> HTMLResponse:
    """The one response that holds the raw key: rendered in the POST's answer (never a redirect carrying it), and
    sent `no-store` by the dashboard's headers."""
    key = await keys.read_one(issued.row)
    return render(
        request,
        "reveal.html",
        visitor,
        title=title,
        label="New API key",
        secret=issued.raw,
        next_url=f"/ui/keys/{key.id}",
        next_text=f"Go to {key.name}",
    )


async def find_key(
    keys: KeyManager, key_pk: int, visitor: SignedIn, *, owner_id: int | None, for_update: bool = False
) -> ApiKey:
    """The key if `owner_id` owns it (None: any owner's, for administrators), else a 404 page."""
    if not 1 <= key_pk <= MAX_ID:
        raise PageError(404, "Not found", "No such key.", visitor)
    try:
        return await keys.get(key_pk, owner_id=owner_id, for_update=for_update)
    except KeyNotFoundError:
        raise PageError(404, "Not found", "No such key.", visitor) from None


async def _owned_key(keys: KeyManager, key_pk: int, visitor: SignedIn, *, for_update: bool = False) -> ApiKey:
    """The visitor's key; anyone else's is 404, as on /keys."""
    return await find_key(keys, key_pk, visitor, owner_id=visitor.user.id, for_update=for_update)


@router.get("/keys/{key_pk}", response_class=HTMLResponse)
async def key_detail(
    request: Request, key_pk: int, visitor: Visitor, keys: KeysDep, keystile: KeystileDep, session: SessionDep
) -> HTMLResponse:
    row = await _owned_key(keys, key_pk, visitor)
    key = await keys.read_one(row)
    now = keystile.clock()
    names = await listing.identity_names(keys, {key.identity_id} if key.identity_id else set())
    return render(
        request,
        "key.html",
        visitor,
        key=key,
        state=key_state(key, now),
        identity=names.get(key.identity_id),
        charts=await key_charts(keystile, session, key.id, now=now),
        grace_periods=list(forms.GRACE_PERIODS),
    )


@router.post("/keys/{key_pk}/rotate", response_class=HTMLResponse)
async def rotate_key(request: Request, key_pk: int, visitor: FormVisitor, keys: KeysDep, ip: ClientIP) -> Response:
    try:
        grace_seconds = forms.grace_seconds_of(await request.form())
    except forms.FormInvalid:
        raise PageError(422, "Invalid grace period", "Choose a grace period from the list.", visitor) from None
    row = await _owned_key(keys, key_pk, visitor, for_update=True)
    try:
        issued = await keys.rotate(row, grace_seconds=grace_seconds, actor_id=visitor.user.id, ip=ip_text(ip))
    except KeyStateConflictError as conflict:
        raise PageError(409, "Cannot rotate", f"{str(conflict).capitalize()}.", visitor) from None
    return await _reveal(request, visitor, keys, issued, title="Key rotated")


async def _set_enabled(key_pk: int, enabled: bool, visitor: SignedIn, keys: KeyManager, ip: str | None) -> Response:
    row = await _owned_key(keys, key_pk, visitor, for_update=True)
    try:
        await keys.update(row, KeyUpdate(enabled=enabled), actor_id=visitor.user.id, ip=ip)
    except KeyStateConflictError as conflict:
        raise PageError(409, "Cannot enable", f"{str(conflict).capitalize()}.", visitor) from None
    return see_other(f"/ui/keys/{key_pk}")


@router.post("/keys/{key_pk}/disable")
async def disable_key(key_pk: int, visitor: FormVisitor, keys: KeysDep, ip: ClientIP) -> Response:
    return await _set_enabled(key_pk, False, visitor, keys, ip_text(ip))


@router.post("/keys/{key_pk}/enable")
async def enable_key(key_pk: int, visitor: FormVisitor, keys: KeysDep, ip: ClientIP) -> Response:
    return await _set_enabled(key_pk, True, visitor, keys, ip_text(ip))


@router.post("/keys/{key_pk}/revoke", response_class=HTMLResponse)
async def revoke_key(request: Request, key_pk: int, visitor: FormVisitor, keys: KeysDep, ip: ClientIP) -> Response:
    """Without `confirm=yes`, only the confirmation page: nothing is revoked before "Confirm revoke"."""
    row = await _owned_key(keys, key_pk, visitor, for_update=True)
    if not confirmed(await request.form()):
        return revoke_confirmation(request, visitor, row, action=f"/ui/keys/{key_pk}/revoke", back=f"/ui/keys/{key_pk}")
    await keys.revoke(row, actor_id=visitor.user.id, ip=ip_text(ip))
    return see_other(f"/ui/keys/{key_pk}")


def revoke_confirmation(request: Request, visitor: SignedIn, row: ApiKey, *, action: str, back: str) -> HTMLResponse:
    """The owner's and the administrators' revoke ask the same question."""
    return confirmation(
        request,
        visitor,
        title=f"Revoke {row.name}",
        message=f"Requests with {row.hint} will be refused from now on. A revoked key cannot be enabled again.",
        action=action,
        button="Confirm revoke",
        cancel_url=back,
    )
