from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, Boolean, ForeignKey, Integer, String, true
from sqlalchemy.orm import Mapped, composite, mapped_column

from keystile.db import Base, UTCDateTime
from keystile.identities import models as _identity_models  # noqa: F401  (the table identity_id refers to)
from keystile.ratelimit.policy import RateLimitPolicy
from keystile.refill import QuotaRefill


class ApiKey(Base):
    """One issued key. Only `key_hash` (HMAC-SHA256 with the pepper) is stored, never the key itself."""

    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(primary_key=True)
    key_id: Mapped[str] = mapped_column(String(12), unique=True)
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    hash_scheme: Mapped[str] = mapped_column(String(32))
    hint: Mapped[str] = mapped_column(String(64))
    name: Mapped[str] = mapped_column(String(100))
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    is_active: Mapped[bool] = mapped_column(Boolean, default=True)  # False once revoked, for good
    enabled: Mapped[bool] = mapped_column(Boolean, default=True, server_default=true())  # a pause, undone by enabling
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
    use_count: Mapped[int] = mapped_column(BigInteger, default=0)
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
    scopes: Mapped[list[str]] = mapped_column(JSON, default=list)
    ip_allowlist: Mapped[list[str]] = mapped_column(JSON, default=list)
    # "metadata" is reserved on declarative classes, so the attribute has another name than the column.
    key_metadata: Mapped[dict[str, Any]] = mapped_column("metadata", JSON, default=dict)
    # One policy over two columns; the first keeps its historical column name under another attribute key.
    rate_limit: Mapped[RateLimitPolicy | None] = composite(
        RateLimitPolicy.of,
        mapped_column("rate_limit", Integer, nullable=True, key="rate_limit_requests"),
        mapped_column("rate_limit_window_seconds", Integer, nullable=True),
    )
    quota_remaining: Mapped[int | None] = mapped_column(BigInteger, default=None)
    # During a rotation's grace the old key draws from its successor's balance: this names the key whose
    # quota_remaining a use of this key spends (None: its own).
    quota_holder_id: Mapped[int | None] = mapped_column(ForeignKey("api_keys.id", ondelete="SET NULL"), default=None)
    quota_refill: Mapped[QuotaRefill | None] = composite(
        QuotaRefill.of,
        mapped_column("quota_refill_amount", BigInteger, nullable=True),
        mapped_column("quota_refill_interval", String(8), nullable=True),
    )
    quota_refilled_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
    identity_id: Mapped[int | None] = mapped_column(ForeignKey("identities.id"), index=True, default=None)
    rotated_from: Mapped[int | None] = mapped_column(ForeignKey("api_keys.id", ondelete="SET NULL"), default=None)

    def __repr__(self) -> str:
        return f"ApiKey(id={self.id!r}, key_id={self.key_id!r}, name={self.name!r}, user_id={self.user_id!r})"
