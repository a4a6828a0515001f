"""Request and response bodies of /webhooks."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from keystile.events.types import EventType
from keystile.webhooks.models import MAX_URL_LENGTH, WebhookEndpoint

MAX_EVENTS = 20


def _webhook_url(url: str) -> str:
    """An absolute http(s) URL with a host and no credentials (they would be stored, and sent, in the clear). Where
    the host points is checked separately, since that needs DNS (webhooks/ssrf.py)."""
    import httpx

    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, ValueError):
        raise ValueError("not a valid URL") from None
    if parsed.scheme not in ("http", "https"):
        raise ValueError("the URL must be http or https")
    if not parsed.host:
        raise ValueError("the URL must name a host")
    if parsed.userinfo:
        raise ValueError("the URL must not carry credentials")
    if parsed.fragment:
        raise ValueError("the URL must not have a fragment")
    return url


WebhookURL = Annotated[
    str, Field(min_length=1, max_length=MAX_URL_LENGTH, pattern=r"^[!-~]+$"), AfterValidator(_webhook_url)
]
Description = Annotated[str, Field(max_length=500, pattern=r"^[^\x00-\x1f\x7f]*$")]


def _unique(values: list[str]) -> list[str]:
    return list(dict.fromkeys(values))


EventTypes = Annotated[list[EventType], Field(min_length=1, max_length=MAX_EVENTS), AfterValidator(_unique)]


class WebhookCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: WebhookURL
    events: EventTypes
    description: Description | None = None


class WebhookUpdate(BaseModel):
    """Only the fields present change; `enabled: true` re-enables an endpoint disabled after failing for days."""

    model_config = ConfigDict(extra="forbid")

    url: WebhookURL | None = None
    events: EventTypes | None = None
    description: Description | None = None
    enabled: bool | None = None


class WebhookRead(BaseModel):
    id: int
    url: str
    events: list[str]
    description: str | None
    enabled: bool
    created_at: datetime

    @classmethod
    def from_row(cls, row: WebhookEndpoint) -> WebhookRead:
        return cls(
            id=row.id,
            url=row.url,
            events=row.events,
            description=row.description,
            enabled=row.enabled,
            created_at=row.created_at,
        )


class WebhookCreated(WebhookRead):
    secret: str = Field(description="`whsec_` + base64 of the signing key. Shown this once: keep it now.")


class DeliveryRead(BaseModel):
    event_id: str = Field(description="The `webhook-id` sent")
    type: str
    attempt: int
    status_code: int | None
    error: str | None
    at: datetime
    next_attempt_at: datetime | None


class TestQueued(BaseModel):
    event_id: str = Field(description="The `webhook-id` the test event is sent with")
