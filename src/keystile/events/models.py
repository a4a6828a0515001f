"""The outbox (`outbox_events`), the work queue of deliveries (`webhook_deliveries`) and their history
(`webhook_attempts`).

An event row is written in the transaction of the change it reports; the dispatcher later turns it into one delivery
per subscribed endpoint (`fanned_out`). A delivery is claimed by moving `next_attempt_at` to the end of a lease, so a
process that dies mid-send leaves it due again when the lease ends: at least once, never lost.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Boolean, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from keystile.db import Base, UTCDateTime
from keystile.keys.models import ApiKey
from keystile.webhooks.models import WebhookEndpoint


class OutboxEvent(Base):
    __tablename__ = "outbox_events"

    id: Mapped[int] = mapped_column(primary_key=True)
    # The `webhook-id` every delivery of this event carries, on every retry (receivers deduplicate by it).
    event_id: Mapped[str] = mapped_column(String(40), unique=True)
    type: Mapped[str] = mapped_column(String(64))
    owner_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    api_key_id: Mapped[int | None] = mapped_column(ForeignKey("api_keys.id", ondelete="SET NULL"), default=None)
    # Set for an event meant for one endpoint only (`webhook.test`), whatever it subscribes to.
    endpoint_id: Mapped[int | None] = mapped_column(ForeignKey(WebhookEndpoint.id, ondelete="CASCADE"), default=None)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    # The exact JSON body that is signed and sent: written once, so every retry sends the same bytes.
    body: Mapped[str] = mapped_column(Text)
    # Events that must happen once (key.expiring for one expiry, key.quota_low per period) carry a key here; the
    # unique constraint makes "once" hold across processes without any coordination but the insert itself.
    dedupe_key: Mapped[str | None] = mapped_column(String(200), unique=True, default=None)
    fanned_out: Mapped[bool] = mapped_column(Boolean, default=False, index=True)


class DeliveryState:
    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"


class WebhookDelivery(Base):
    """One event for one endpoint: pending until a 2xx (delivered) or the last retry (failed)."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        UniqueConstraint("event_pk", "endpoint_id"),
        Index("ix_webhook_deliveries_due", "state", "next_attempt_at"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    event_pk: Mapped[int] = mapped_column(ForeignKey(OutboxEvent.id, ondelete="CASCADE"))
    endpoint_id: Mapped[int] = mapped_column(ForeignKey(WebhookEndpoint.id, ondelete="CASCADE"), index=True)
    state: Mapped[str] = mapped_column(String(16))
    # Attempts made so far in this round (a replay starts a new round); picks the next retry delay.
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    # When it is due; while claimed, when the claim's lease ends.
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # Bumped by every claim: a process records its result only if no later claim took the delivery over.
    claims: Mapped[int] = mapped_column(Integer, default=0)


class DeliveryAttempt(Base):
    """One HTTP attempt, as GET /webhooks/{id}/deliveries lists it."""

    __tablename__ = "webhook_attempts"

    id: Mapped[int] = mapped_column(primary_key=True)
    delivery_id: Mapped[int] = mapped_column(ForeignKey(WebhookDelivery.id, ondelete="CASCADE"), index=True)
    endpoint_id: Mapped[int] = mapped_column(ForeignKey(WebhookEndpoint.id, ondelete="CASCADE"), index=True)
    attempt: Mapped[int] = mapped_column(Integer)
    # Indexed for the pruning of old attempts (events/retention.py), which picks them by `at`.
    at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    status_code: Mapped[int | None] = mapped_column(Integer, default=None)
    error: Mapped[str | None] = mapped_column(String(200), default=None)
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)


# The expiry scan (events/expiry.py) looks keys up by expiry every minute; without this index that is a scan of the
# whole table. Declared here, beside its only reader, on the keys table.
Index("ix_api_keys_expires_at", ApiKey.__table__.c.expires_at)
