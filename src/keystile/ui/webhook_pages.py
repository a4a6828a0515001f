"""Webhooks: the list, the create form (the signing secret revealed once), an endpoint's deliveries, a test send."""

from __future__ import annotations

from typing import Annotated, get_args

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse, Response

from keystile.db import MAX_ID
from keystile.deps import KeystileDep, SessionDep
from keystile.events.types import EventType
from keystile.ui import forms
from keystile.ui.pages import FormVisitor, PageError, SignedIn, Visitor, render, see_other
from keystile.webhooks.models import WebhookEndpoint
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
    values: dict[str, object] = {
        "url": form.get("url") or "",
        "description": form.get("description") or "",
        "events": form.getlist("events"),
    }
    try:
        created = await webhooks.create(owner_id=visitor.user.id, spec=forms.webhook_from_form(form))
    except forms.FormInvalid as invalid:
        return _form(request, visitor, errors=invalid.errors, values=values)
    except UnsafeURLError as refused:
        return _form(request, visitor, errors={"url": str(refused)}, values=values)
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


@router.get("/webhooks/{webhook_id}", response_class=HTMLResponse)
async def webhook_detail(request: Request, webhook_id: int, visitor: Visitor, webhooks: WebhooksDep) -> HTMLResponse:
    row = await _owned(webhooks, webhook_id, visitor)
    deliveries = await webhooks.attempts(row, limit=50, offset=0)
    return render(request, "webhook.html", visitor, webhook=row, deliveries=deliveries)


@router.post("/webhooks/{webhook_id}/test")
async def test_webhook(webhook_id: int, visitor: FormVisitor, webhooks: WebhooksDep) -> Response:
    row = await _owned(webhooks, webhook_id, visitor)
    try:
        await webhooks.send_test(row)
    except WebhookDisabledError:
        raise PageError(409, "Webhook disabled", "Enable the webhook before sending a test.", visitor) from None
    return see_other(f"/ui/webhooks/{webhook_id}?sent=1")
