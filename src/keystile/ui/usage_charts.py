"""Usage charts of a key or an identity: the last 24 hours by hour and the last 30 days by day, from the usage
history."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncSession

from keystile.instance import Keystile
from keystile.ui.chart import Chart, build
from keystile.usage import history
from keystile.usage.history import Window
from keystile.usage.schemas import Interval, UsageBucket

CHARTS: tuple[tuple[Interval, str], ...] = (("hour", "Last 24 hours, by hour"), ("day", "Last 30 days, by day"))

Reader = Callable[[AsyncSession, int, Window], Awaitable[list[UsageBucket]]]


async def _charts(keystile: Keystile, session: AsyncSession, read: Reader, subject: int, now: datetime) -> list[Chart]:
    await keystile.usage.flush()  # counts this process still holds belong in the chart
    charts = []
    for interval, title in CHARTS:
        window = Window.of(interval, None, None, now=now)
        charts.append(build(title, window.interval, await read(session, subject, window)))
    return charts


async def key_charts(keystile: Keystile, session: AsyncSession, api_key_id: int, *, now: datetime) -> list[Chart]:
    return await _charts(keystile, session, history.key_usage, api_key_id, now)


async def identity_charts(keystile: Keystile, session: AsyncSession, identity_id: int, *, now: datetime) -> list[Chart]:
    return await _charts(keystile, session, history.identity_usage, identity_id, now)
