"""`/webhooks`: a user's own webhook endpoints. Thin: parse, call `Webhooks`, map its errors to statuses."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Path, Response, status

from keystile.db import MAX_ID
from keystile.deps import CurrentUser, KeystileDep, Limit, Offset, SessionDep
from keystile.errors import validation_error
from keystile.responses import BEARER_ANSWERS, DETAIL_BODY
from keystile.webhooks.models import WebhookEndpoint
from keystile.webhooks.schemas import (
    DeliveryRead,
    TestQueued,
    WebhookCreate,
    WebhookCreated,
    WebhookRead,
    WebhookUpdate,
)
from keystile.webhooks.service import WebhookDisabledError, WebhookNotFoundError, Webhooks
from keystile.webhooks.ssrf import UnsafeURLError

router = APIRouter(prefix="/webhooks", tags=["webhooks"], responses=BEARER_ANSWERS)

WebhookId = Annotated[int, Path(ge=1, le=MAX_ID, description="The webhook endpoint's id")]
_NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {"description": "No such webhook, or not yours", "content": DETAIL_BODY}
}
_REFUSED_URL: dict[int | str, dict[str, Any]] = {
    422: {"description": "Invalid body, or a URL whose host is or resolves to a non-public address"}
}


async def _webhooks(keystile: KeystileDep, session: SessionDep) -> Webhooks:
    return Webhooks(
        session,
        secrets=keystile.events.secrets,
        clock=keystile.clock,
        allow_private=keystile.settings.webhook_allow_private,
    )


WebhooksDep = Annotated[Webhooks, Depends(_webhooks)]


async def _owned(webhook_id: WebhookId, webhooks: WebhooksDep, user: CurrentUser) -> WebhookEndpoint:
    try:
        return await webhooks.get(webhook_id, owner_id=user.id)
    except WebhookNotFoundError:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail="Webhook not found") from None


OwnedWebhook = Annotated[WebhookEndpoint, Depends(_owned)]


def _refused(error: UnsafeURLError) -> Exception:
    return validation_error("url", str(error))


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=WebhookCreated,
    summary="Add a webhook endpoint (its signing secret is in this response only)",
    responses=_REFUSED_URL,
)
async def create_webhook(
    spec: WebhookCreate, response: Response, webhooks: WebhooksDep, user: CurrentUser
) -> WebhookCreated:
    try:
        created = await webhooks.create(owner_id=user.id, spec=spec)
    except UnsafeURLError as error:
        raise _refused(error) from None
    response.headers["Cache-Control"] = "no-store"
    return WebhookCreated(**WebhookRead.from_row(created.row).model_dump(), secret=created.secret)


@router.get("", response_model=list[WebhookRead], summary="Your webhook endpoints, newest first")
async def list_webhooks(
    webhooks: WebhooksDep, user: CurrentUser, limit: Limit = 50, offset: Offset = 0
) -> list[WebhookRead]:
    return [WebhookRead.from_row(row) for row in await webhooks.list_page(owner_id=user.id, limit=limit, offset=offset)]


@router.get("/{webhook_id}", response_model=WebhookRead, responses=_NOT_FOUND)
async def get_webhook(row: OwnedWebhook) -> WebhookRead:
    return WebhookRead.from_row(row)


@router.patch("/{webhook_id}", response_model=WebhookRead, responses=_NOT_FOUND | _REFUSED_URL)
async def update_webhook(row: OwnedWebhook, changes: WebhookUpdate, webhooks: WebhooksDep) -> WebhookRead:
    try:
        await webhooks.update(row, changes)
    except UnsafeURLError as error:
        raise _refused(error) from None
    return WebhookRead.from_row(row)


@router.delete("/{webhook_id}", status_code=status.HTTP_204_NO_CONTENT, responses=_NOT_FOUND)
async def delete_webhook(row: OwnedWebhook, webhooks: WebhooksDep) -> Response:
    await webhooks.delete(row)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get(
    "/{webhook_id}/deliveries",
    response_model=list[DeliveryRead],
    summary="Delivery attempts to this endpoint, newest first",
    responses=_NOT_FOUND,
)
async def list_deliveries(
    row: OwnedWebhook, webhooks: WebhooksDep, limit: Limit = 50, offset: Offset = 0
) -> list[DeliveryRead]:
    return await webhooks.attempts(row, limit=limit, offset=offset)


@router.post(
    "/{webhook_id}/test",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=TestQueued,
    summary="Send a webhook.test event to this endpoint, whatever it subscribes to",
    responses=_NOT_FOUND | {409: {"description": "The endpoint is disabled", "content": DETAIL_BODY}},
)
async def test_webhook(row: OwnedWebhook, webhooks: WebhooksDep) -> TestQueued:
    try:
        return TestQueued(event_id=await webhooks.send_test(row))
    except WebhookDisabledError:
        raise HTTPException(status.HTTP_409_CONFLICT, detail="The webhook is disabled: enable it first") from None
