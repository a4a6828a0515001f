"""The embedded backend: counters in this process, exact for one process and nothing else."""

from __future__ import annotations

from datetime import datetime

from keystile.ratelimit.base import Decision, Window


class MemoryRateLimiter:
    def __init__(self) -> None:
        # One entry per bucket: (window start, units used). An old window is overwritten on the next hit, so memory
        # stays proportional to the number of buckets, not of requests.
        self._windows: dict[str, tuple[int, int]] = {}

    async def hit(self, bucket: str, *, limit: int, window_seconds: int, cost: int, now: datetime) -> Decision:
        window = Window.at(now, window_seconds)
        start, used = self._windows.get(bucket, (window.start_ms, 0))
        if start != window.start_ms:
            used = 0
        decision, used_after = window.decide(used_before=used, limit=limit, cost=cost)
        self._windows[bucket] = (window.start_ms, used_after)
        return decision

    async def ping(self) -> bool:
        return True

    async def close(self) -> None:
        self._windows.clear()
