"""A key's usage charts: the last 24 hours by hour and the last 30 days by day, from the usage history."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncSession

from keystile.instance import Keystile
from keystile.ui.chart import Chart, build
from keystile.usage import history
from keystile.usage.history import Window
from keystile.usage.schemas import Interval

CHARTS: tuple[tuple[Interval, str], ...] = (("hour", "Last 24 hours, by hour"), ("day", "Last 30 days, by day"))


async def key_charts(keystile: Keystile, session: AsyncSession, api_key_id: int, *, now: datetime) -> list[Chart]:
    await keystile.usage.flush()  # counts this process still holds belong in the chart
    charts = []
    for interval, title in CHARTS:
        window = Window.of(interval, None, None, now=now)
        charts.append(build(title, window.interval, await history.key_usage(session, api_key_id, window)))
    return charts
