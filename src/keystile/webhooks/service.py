"""A user's webhook endpoints: create (the secret shown once), read, change, delete; their attempts; test events.

Every read and change is scoped to the owner: someone else's endpoint is "not found", as with keys.
"""

from __future__ import annotations

from dataclasses import KW_ONLY, dataclass, field

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession

from keystile.clock import Clock
from keystile.events import outbox, types
from keystile.events.models import DeliveryAttempt, OutboxEvent, WebhookDelivery
from keystile.events.signing import new_secret
from keystile.webhooks import ssrf
from keystile.webhooks.models import WebhookEndpoint
from keystile.webhooks.schemas import DeliveryRead, WebhookCreate, WebhookUpdate
from keystile.webhooks.secrets import SecretBox


class WebhookNotFoundError(Exception):
    pass


class WebhookDisabledError(Exception):
    pass


@dataclass(frozen=True)
class CreatedWebhook:
    row: WebhookEndpoint
    secret: str = field(repr=False)


@dataclass(frozen=True, slots=True)
class Webhooks:
    session: AsyncSession
    _: KW_ONLY
    secrets: SecretBox
    clock: Clock
    allow_private: bool

    async def check_url(self, url: str) -> None:
        """UnsafeURLError unless the URL's host is public (or private receivers are allowed)."""
        if not self.allow_private:
            await ssrf.destination(url, allow_private=False)

    async def create(self, *, owner_id: int, spec: WebhookCreate) -> CreatedWebhook:
        await self.check_url(spec.url)
        secret = new_secret()
        row = WebhookEndpoint(
            user_id=owner_id,
            url=spec.url,
            events=list(spec.events),
            description=spec.description,
            sealed_secret=self.secrets.seal(secret),
            enabled=True,
            created_at=self.clock(),
        )
        self.session.add(row)
        await self.session.commit()
        return CreatedWebhook(row=row, secret=secret)

    async def list_page(self, *, owner_id: int, limit: int, offset: int) -> list[WebhookEndpoint]:
        query = (
            select(WebhookEndpoint)
            .where(WebhookEndpoint.user_id == owner_id)
            .order_by(WebhookEndpoint.id.desc())
            .limit(limit)
            .offset(offset)
        )
        return list((await self.session.scalars(query)).all())

    async def get(self, webhook_id: int, *, owner_id: int | None) -> WebhookEndpoint:
        query = select(WebhookEndpoint).where(WebhookEndpoint.id == webhook_id)
        if owner_id is not None:
            query = query.where(WebhookEndpoint.user_id == owner_id)
        row = await self.session.scalar(query)
        if row is None:
            raise WebhookNotFoundError(webhook_id)
        return row

    async def update(self, row: WebhookEndpoint, changes: WebhookUpdate) -> None:
        fields = changes.model_fields_set
        if changes.url is not None:
            await self.check_url(changes.url)
            row.url = changes.url
        if changes.events is not None:
            row.events = list(changes.events)
        if "description" in fields:
            row.description = changes.description
        if changes.enabled is not None:
            row.enabled = changes.enabled
            if changes.enabled:
                row.failing_since = None  # a fresh start: the failing-days count begins again
        await self.session.commit()

    async def delete(self, row: WebhookEndpoint) -> None:
        await self.session.execute(delete(WebhookEndpoint).where(WebhookEndpoint.id == row.id))
        await self.session.commit()

    async def attempts(self, row: WebhookEndpoint, *, limit: int, offset: int) -> list[DeliveryRead]:
        query = (
            select(DeliveryAttempt, OutboxEvent.event_id, OutboxEvent.type)
            .join(WebhookDelivery, WebhookDelivery.id == DeliveryAttempt.delivery_id)
            .join(OutboxEvent, OutboxEvent.id == WebhookDelivery.event_pk)
            .where(DeliveryAttempt.endpoint_id == row.id)
            .order_by(DeliveryAttempt.id.desc())
            .limit(limit)
            .offset(offset)
        )
        return [
            DeliveryRead(
                event_id=event_id,
                type=event_type,
                attempt=attempt.attempt,
                status_code=attempt.status_code,
                error=attempt.error,
                at=attempt.at,
                next_attempt_at=attempt.next_attempt_at,
            )
            for attempt, event_id, event_type in await self.session.execute(query)
        ]

    async def send_test(self, row: WebhookEndpoint) -> str:
        """Queue a `webhook.test` event for this endpoint alone, whatever it subscribes to; its event id."""
        if not row.enabled:
            raise WebhookDisabledError(row.id)
        now = self.clock()
        pending = outbox.PendingEvent(
            types.WEBHOOK_TEST, row.user_id, {"webhook_id": row.id, "url": row.url}, now, endpoint_id=row.id
        )
        event_id = outbox.emit(self.session, pending)
        await self.session.commit()
        return event_id
