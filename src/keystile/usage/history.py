"""Reading usage history: a window of UTC buckets, each the sum of the stored hours it holds, zero-filled.

Only hours are stored; a day is the sum of its 24 hours, added up here. A window never holds more than MAX_BUCKETS, so
a read is at most 24,000 hour rows of one key or identity (a range scan of the table's primary key).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from keystile.usage.models import COUNT_COLUMNS, IdentityUsageHour, KeyUsageHour
from keystile.usage.schemas import Interval, UsageBucket

STEPS: dict[Interval, timedelta] = {"hour": timedelta(hours=1), "day": timedelta(days=1)}
DEFAULT_BUCKETS: dict[Interval, int] = {"hour": 24, "day": 30}
MAX_BUCKETS = 1000
# Times outside are refused rather than computed with: rounding or a default window there would leave datetime's range.
EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
LATEST = datetime(9999, 1, 1, tzinfo=UTC)


class WindowError(ValueError):
    """A window the query parameters cannot give; `field` names the parameter to blame."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


def bucket_start(at: datetime, interval: Interval) -> datetime:
    """The start of the UTC hour or day holding `at` (aware, UTC)."""
    start = at.replace(minute=0, second=0, microsecond=0)
    return start.replace(hour=0) if interval == "day" else start


@dataclass(frozen=True, slots=True)
class Window:
    """Buckets of `interval` from `start` (inclusive) to `end` (exclusive), both on bucket boundaries."""

    interval: Interval
    start: datetime
    end: datetime

    @classmethod
    def of(cls, interval: Interval, since: datetime | None, until: datetime | None, *, now: datetime) -> Window:
        """The window the routes' parameters ask for: `since` floored to its bucket's start, `until` rounded up to a
        bucket's end. Without `until`, the window ends with the bucket holding `now`; without `since`, it holds the
        default number of buckets (24 hours or 30 days) up to its end. Naive times are taken as UTC."""
        since = _utc(since, "since")
        until = _utc(until, "until")
        if since is not None and since > (until or now):
            raise WindowError("since", "since must not be later than until (default: now)")
        step = STEPS[interval]
        if until is None:
            end = bucket_start(now, interval) + step
        else:
            end = bucket_start(until, interval)
            end = end if end == until else end + step
        start = bucket_start(since, interval) if since is not None else end - DEFAULT_BUCKETS[interval] * step
        window = cls(interval, start, end)
        if window.size > MAX_BUCKETS:
            raise WindowError(
                "since",
                f"at most {MAX_BUCKETS} buckets per call, and since..until holds {window.size} {interval}s: "
                "narrow it, or ask for interval=day",
            )
        return window

    @property
    def step(self) -> timedelta:
        return STEPS[self.interval]

    @property
    def size(self) -> int:
        return (self.end - self.start) // self.step

    def starts(self) -> Iterator[datetime]:
        for index in range(self.size):
            yield self.start + index * self.step


def _utc(value: datetime | None, field: str) -> datetime | None:
    if value is None:
        return None
    out_of_range = WindowError(field, f"{field} must lie between {EARLIEST.date()} and {LATEST.date()}")
    try:
        value = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    except OverflowError:  # an offset that moves datetime's first or last day out of its range
        raise out_of_range from None
    if not EARLIEST <= value <= LATEST:
        raise out_of_range
    return value


async def key_usage(session: AsyncSession, api_key_id: int, window: Window) -> list[UsageBucket]:
    return await _usage(session, KeyUsageHour, KeyUsageHour.api_key_id == api_key_id, window)


async def identity_usage(session: AsyncSession, identity_id: int, window: Window) -> list[UsageBucket]:
    return await _usage(session, IdentityUsageHour, IdentityUsageHour.identity_id == identity_id, window)


async def _usage(
    session: AsyncSession, model: type[KeyUsageHour] | type[IdentityUsageHour], subject: Any, window: Window
) -> list[UsageBucket]:
    counts = [getattr(model, column) for column in COUNT_COLUMNS]
    rows = await session.execute(
        select(model.hour, *counts).where(subject, model.hour >= window.start, model.hour < window.end)
    )
    totals = {start: [0] * len(COUNT_COLUMNS) for start in window.starts()}
    for hour, *hour_counts in rows:
        bucket = totals[bucket_start(hour, window.interval)]
        for column, count in enumerate(hour_counts):
            bucket[column] += count
    return [
        UsageBucket(start=start, **dict(zip(COUNT_COLUMNS, bucket, strict=True))) for start, bucket in totals.items()
    ]
