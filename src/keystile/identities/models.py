from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, ForeignKey, Integer, String, UniqueConstraint
from sqlalchemy.orm import Mapped, composite, mapped_column

from keystile.db import Base, UTCDateTime
from keystile.ratelimit.policy import RateLimitPolicy
from keystile.refill import QuotaRefill


class Identity(Base):
    """A customer of the owner's API (`external_id` is the owner's name for it). Its rate limit and quota are shared
    by every key that names it; each key's own limits apply as well."""

    __tablename__ = "identities"
    __table_args__ = (UniqueConstraint("user_id", "external_id", name="uq_identities_user_id_external_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    external_id: Mapped[str] = mapped_column(String(255))
    identity_metadata: Mapped[dict[str, Any]] = mapped_column("metadata", JSON, default=dict)
    rate_limit: Mapped[RateLimitPolicy | None] = composite(
        RateLimitPolicy.of,
        mapped_column("rate_limit", Integer, nullable=True, key="rate_limit_requests"),
        mapped_column("rate_limit_window_seconds", Integer, nullable=True),
    )
    quota_remaining: Mapped[int | None] = mapped_column(BigInteger, default=None)
    quota_refill: Mapped[QuotaRefill | None] = composite(
        QuotaRefill.of,
        mapped_column("quota_refill_amount", BigInteger, nullable=True),
        mapped_column("quota_refill_interval", String(8), nullable=True),
    )
    quota_refilled_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)

    def __repr__(self) -> str:
        return f"Identity(id={self.id!r}, external_id={self.external_id!r}, user_id={self.user_id!r})"
