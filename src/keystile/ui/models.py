"""The `ui_sessions` table: one row per signed-in browser, found by a hash of its cookie, never the cookie itself."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, String
from sqlalchemy.orm import Mapped, mapped_column

from keystile.db import Base, UTCDateTime
from keystile.users import models as _user_models  # noqa: F401  (the table user_id refers to)


class UiSession(Base):
    __tablename__ = "ui_sessions"

    id: Mapped[int] = mapped_column(primary_key=True)
    # SHA-256 of the cookie's random token: a copy of the table does not sign anyone in.
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    # The one-time id of the last "create key" form this session submitted: a resubmission (reload, back) of that
    # form creates nothing and shows no key.
    spent_form_id: Mapped[str | None] = mapped_column(String(64), default=None)

    def __repr__(self) -> str:
        return f"UiSession(id={self.id!r}, user_id={self.user_id!r}, expires_at={self.expires_at!r})"
