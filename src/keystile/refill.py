"""`QuotaRefill`: a quota that becomes `amount` again at each UTC day or calendar month (API.md section 8).

A refill is a reset, not an addition: at the boundary the balance is `amount` whatever was left, so nothing carries
over. Which period a moment falls in is all the arithmetic there is; the ledger (keys/quota.py) applies it.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Literal, cast

from pydantic import BaseModel, ConfigDict, Field

Interval = Literal["daily", "monthly"]

MAX_QUOTA = 2**62


class QuotaRefill(BaseModel):
    """Validated in request bodies; built and taken apart positionally by SQLAlchemy's `composite()` over the two
    columns that store it, like RateLimitPolicy."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    amount: int = Field(ge=1, le=MAX_QUOTA, description="the balance after each refill")
    interval: Interval = Field(description="UTC day or calendar month")

    @classmethod
    def of(cls, amount: int | None, interval: str | None) -> QuotaRefill | None:
        if amount is None or interval is None:
            return None
        return cls.model_construct(amount=amount, interval=cast(Interval, interval))  # stored values, once validated

    def __composite_values__(self) -> tuple[int, str]:
        return self.amount, self.interval

    def period_start(self, now: datetime) -> datetime:
        """The start of the refill period holding `now`: its UTC day, or the first of its month."""
        return period_start(self.interval, now)


def period_start(interval: Interval | str, now: datetime) -> datetime:
    now = now.astimezone(UTC)
    day = now.replace(hour=0, minute=0, second=0, microsecond=0)
    return day if interval == "daily" else day.replace(day=1)


def next_period_start(interval: Interval | str, start: datetime) -> datetime:
    """The start of the period after the one starting at `start`."""
    if interval == "daily":
        return start + timedelta(days=1)
    return start.replace(year=start.year + 1, month=1) if start.month == 12 else start.replace(month=start.month + 1)


def current_balance(
    remaining: int | None, refill: QuotaRefill | None, refilled_at: datetime | None, now: datetime
) -> tuple[int | None, datetime | None]:
    """The balance and last refill as of `now`, for display: a refill that is due but not yet applied (nobody used
    the quota since the boundary) shows as applied, as the next use will make it."""
    if refill is None or remaining is None:
        return remaining, refilled_at
    start = refill.period_start(now)
    if refilled_at is None or refilled_at < start:
        return refill.amount, start
    return remaining, refilled_at
