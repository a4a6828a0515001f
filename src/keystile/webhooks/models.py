"""The `webhook_endpoints` table: where a user's events go, and the secret they are signed with (sealed)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON, Boolean, ForeignKey, String
from sqlalchemy.orm import Mapped, mapped_column

from keystile.db import Base, UTCDateTime

MAX_URL_LENGTH = 2048


class WebhookEndpoint(Base):
    __tablename__ = "webhook_endpoints"

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    url: Mapped[str] = mapped_column(String(MAX_URL_LENGTH))
    events: Mapped[list[str]] = mapped_column(JSON, default=list)
    description: Mapped[str | None] = mapped_column(String(500), default=None)
    # The signing secret encrypted with a key derived from SECRET_KEY (webhooks/secrets.py): it must be read back to
    # sign, so it cannot be hashed, but a copy of the database alone does not reveal it.
    sealed_secret: Mapped[str] = mapped_column(String(255))
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    # When the current run of failed attempts began (None: the last attempt succeeded); past
    # KEYSTILE_WEBHOOK_DISABLE_AFTER_DAYS of failures the endpoint is disabled.
    failing_since: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)

    def __repr__(self) -> str:
        return f"WebhookEndpoint(id={self.id!r}, user_id={self.user_id!r}, enabled={self.enabled!r})"
