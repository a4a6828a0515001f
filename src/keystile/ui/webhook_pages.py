"""Webhooks: the list, the create form (the signing secret revealed once), an endpoint's page (its deliveries, a test
send, its edit form, disable/enable, delete). Every change is one `Webhooks` call, the path the API takes."""

from __future__ import annotations

from typing import Annotated, get_args

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse, Response
from starlette.datastructures import FormData

from keystile.db import MAX_ID
from keystile.deps import KeystileDep, SessionDep
from keystile.events.types import EventType
from keystile.ui import forms
from keystile.ui.pages import FormVisitor, PageError, SignedIn, Visitor, confirmation, confirmed, render, see_other
from keystile.webhooks.models import WebhookEndpoint
from keystile.webhooks.schemas import WebhookUpdate
from keystile.webhooks.service import WebhookDisabledError, WebhookNotFoundError, Webhooks
from keystile.webhooks.ssrf import UnsafeURLError

router = APIRouter()

EVENT_TYPES = [event for event in get_args(EventType) if event != "webhook.test"]


async def _webhooks(keystile: KeystileDep, session: SessionDep) -> Webhooks:
    return Webhooks(
        session,
        secrets=keystile.events.secrets,
        clock=keystile.clock,
        allow_private=keystile.settings.webhook_allow_private,
    )


WebhooksDep = Annotated[Webhooks, Depends(_webhooks)]


async def _owned(webhooks: Webhooks, webhook_id: int, visitor: SignedIn) -> WebhookEndpoint:
    if not 1 <= webhook_id <= MAX_ID:
        raise PageError(404, "Not found", "No such webhook.", visitor)
    try:
        return await webhooks.get(webhook_id, owner_id=visitor.user.id)
    except WebhookNotFoundError:
        raise PageError(404, "Not found", "No such webhook.", visitor) from None


def _submitted(form: FormData) -> dict[str, object]:
    """What the visitor typed, to fill the form again when it is refused."""
    return {
        "url": form.get("url") or "",
        "description": form.get("description") or "",
        "events": form.getlist("events"),
    }


@router.get("/webhooks", response_class=HTMLResponse)
async def webhooks_list(request: Request, visitor: Visitor, webhooks: WebhooksDep) -> HTMLResponse:
    rows = await webhooks.list_page(owner_id=visitor.user.id, limit=100, offset=0)
    return render(request, "webhooks.html", visitor, webhooks=rows)


def _form(request: Request, visitor: SignedIn, *, errors: dict[str, str], values: dict[str, object]) -> HTMLResponse:
    return render(
        request,
        "webhook_new.html",
        visitor,
        status_code=422 if errors else 200,
        event_types=EVENT_TYPES,
        errors=errors,
        values=values,
    )


@router.get("/webhooks/new", response_class=HTMLResponse)
async def new_webhook(request: Request, visitor: Visitor) -> HTMLResponse:
    return _form(request, visitor, errors={}, values={"events": []})


@router.post("/webhooks/new", response_class=HTMLResponse)
async def create_webhook(request: Request, visitor: FormVisitor, webhooks: WebhooksDep) -> Response:
    form = await request.form()
    try:
        created = await webhooks.create(owner_id=visitor.user.id, spec=forms.webhook_from_form(form))
    except forms.FormInvalid as invalid:
        return _form(request, visitor, errors=invalid.errors, values=_submitted(form))
    except UnsafeURLError as refused:
        return _form(request, visitor, errors={"url": str(refused)}, values=_submitted(form))
    return render(
        request,
        "reveal.html",
        visitor,
        title="Webhook created",
        label="Webhook signing secret",
        secret=created.secret,
        next_url=f"/ui/webhooks/{created.row.id}",
        next_text="Go to the webhook",
    )


async def _webhook_page(
    request: Request,
    visitor: SignedIn,
    webhooks: Webhooks,
    row: WebhookEndpoint,
    *,
    errors: dict[str, str] | None = None,
    values: dict[str, object] | None = None,
) -> HTMLResponse:
    """The endpoint's page; with `errors`, its edit form refused (422) and filled with `values`."""
    if values is None:
        values = {"url": row.url, "events": list(row.events), "description": row.description or ""}
    return render(
        request,
        "webhook.html",
        visitor,
        status_code=422 if errors else 200,
        webhook=row,
        deliveries=await webhooks.attempts(row, limit=50, offset=0),
        event_types=EVENT_TYPES,
        errors=errors or {},
        values=values,
    )


@router.get("/webhooks/{webhook_id}", response_class=HTMLResponse)
async def webhook_detail(request: Request, webhook_id: int, visitor: Visitor, webhooks: WebhooksDep) -> HTMLResponse:
    return await _webhook_page(request, visitor, webhooks, await _owned(webhooks, webhook_id, visitor))


@router.post("/webhooks/{webhook_id}/edit", response_class=HTMLResponse)
async def edit_webhook(request: Request, webhook_id: int, visitor: FormVisitor, webhooks: WebhooksDep) -> Response:
    """URL, events and description, checked as `PATCH /webhooks/{id}` checks them (the URL's host too)."""
    row = await _owned(webhooks, webhook_id, visitor)
    form = await request.form()
    try:
        await webhooks.update(row, forms.webhook_changes_from_form(form))
    except forms.FormInvalid as invalid:
        errors = invalid.errors
    except UnsafeURLError as refused:
        errors = {"url": str(refused)}
    else:
        return see_other(f"/ui/webhooks/{webhook_id}")
    return await _webhook_page(request, visitor, webhooks, row, errors=errors, values=_submitted(form))


async def _set_enabled(webhook_id: int, enabled: bool, visitor: SignedIn, webhooks: Webhooks) -> Response:
    row = await _owned(webhooks, webhook_id, visitor)
    await webhooks.update(row, WebhookUpdate(enabled=enabled))
    return see_other(f"/ui/webhooks/{webhook_id}")


@router.post("/webhooks/{webhook_id}/disable")
async def disable_webhook(webhook_id: int, visitor: FormVisitor, webhooks: WebhooksDep) -> Response:
    return await _set_enabled(webhook_id, False, visitor, webhooks)


@router.post("/webhooks/{webhook_id}/enable")
async def enable_webhook(webhook_id: int, visitor: FormVisitor, webhooks: WebhooksDep) -> Response:
    """Enabling also starts the failing-days count afresh, as `PATCH {"enabled": true}` does."""
    return await _set_enabled(webhook_id, True, visitor, webhooks)


@router.post("/webhooks/{webhook_id}/delete", response_class=HTMLResponse)
async def delete_webhook(request: Request, webhook_id: int, visitor: FormVisitor, webhooks: WebhooksDep) -> Response:
    """Without `confirm=yes`, only the confirmation page: nothing is deleted before "Confirm delete"."""
    row = await _owned(webhooks, webhook_id, visitor)
    if not confirmed(await request.form()):
        return confirmation(
            request,
            visitor,
            title="Delete this webhook",
            message=f"No more events will be sent to {row.url}, and its delivery history goes with it.",
            action=f"/ui/webhooks/{webhook_id}/delete",
            button="Confirm delete",
            cancel_url=f"/ui/webhooks/{webhook_id}",
        )
    await webhooks.delete(row)
    return see_other("/ui/webhooks")


@router.post("/webhooks/{webhook_id}/test")
async def test_webhook(webhook_id: int, visitor: FormVisitor, webhooks: WebhooksDep) -> Response:
    row = await _owned(webhooks, webhook_id, visitor)
    try:
        await webhooks.send_test(row)
    except WebhookDisabledError:
        raise PageError(409, "Webhook disabled", "Enable the webhook before sending a test.", visitor) from None
    return see_other(f"/ui/webhooks/{webhook_id}?sent=1")
