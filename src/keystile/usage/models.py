"""Usage history: verifications per hour by outcome, for a key and for an identity (API.md section 8).

Hours only: a day is the sum of its 24 hours, added up when asked. One row per subject and hour, written by the
usage flush as an upsert that adds, so two processes' counts for one hour add up exactly.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, ForeignKey, PrimaryKeyConstraint
from sqlalchemy.orm import Mapped, mapped_column

from keystile.db import Base, UTCDateTime

# The count columns, in the order the recorder keeps its tallies and the routes answer them.
COUNT_COLUMNS = ("valid", "rate_limited", "quota_exceeded", "rejected")


class _HourCounts:
    hour: Mapped[datetime] = mapped_column(UTCDateTime, index=True)  # its start; indexed for pruning
    valid: Mapped[int] = mapped_column(BigInteger, default=0)
    rate_limited: Mapped[int] = mapped_column(BigInteger, default=0)
    quota_exceeded: Mapped[int] = mapped_column(BigInteger, default=0)
    rejected: Mapped[int] = mapped_column(BigInteger, default=0)


class KeyUsageHour(_HourCounts, Base):
    __tablename__ = "key_usage_hours"
    __table_args__ = (PrimaryKeyConstraint("api_key_id", "hour"),)

    api_key_id: Mapped[int] = mapped_column(ForeignKey("api_keys.id", ondelete="CASCADE"))


class IdentityUsageHour(_HourCounts, Base):
    __tablename__ = "identity_usage_hours"
    __table_args__ = (PrimaryKeyConstraint("identity_id", "hour"),)

    identity_id: Mapped[int] = mapped_column(ForeignKey("identities.id", ondelete="CASCADE"))
