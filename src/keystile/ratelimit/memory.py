"""The embedded backend: counters in this process, exact for one process and nothing else."""

from __future__ import annotations

from datetime import datetime

from keystile.ratelimit.base import Counter, Decision, Window, decide_together

# Past this many buckets, windows that have ended are swept out. Bucket names can be chosen by clients (login emails,
# addresses), so without the sweep memory would grow with every name ever seen.
SWEEP_THRESHOLD = 10_000


class MemoryRateLimiter:
    def __init__(self, sweep_threshold: int = SWEEP_THRESHOLD) -> None:
        # One entry per bucket: (window start, window end, units used), all in ms on the keystile clock.
        self._windows: dict[str, tuple[int, int, int]] = {}
        self._sweep_threshold = sweep_threshold
        self._next_sweep_size = sweep_threshold

    async def hit(self, bucket: str, *, limit: int, window_seconds: int, cost: int, now: datetime) -> Decision:
        window = Window.at(now, window_seconds)
        start, _, used = self._windows.get(bucket, (window.start_ms, window.end_ms, 0))
        if start != window.start_ms:
            used = 0
        decision, used_after = window.decide(used_before=used, limit=limit, cost=cost)
        if used_after or bucket in self._windows:
            self._windows[bucket] = (window.start_ms, window.end_ms, used_after)
            if len(self._windows) >= self._next_sweep_size:
                self._sweep(window.now_ms)
        return decision

    async def hit_all(self, counters: list[Counter], *, cost: int, now: datetime) -> list[Decision]:
        windows = [Window.at(now, counter.window_seconds) for counter in counters]
        used = [self._used(counter.bucket, window) for counter, window in zip(counters, windows, strict=True)]
        decisions = decide_together(windows, counters, used, cost)
        if all(decision.allowed for decision in decisions) and cost:
            for counter, window, used_before in zip(counters, windows, used, strict=True):
                self._windows[counter.bucket] = (window.start_ms, window.end_ms, used_before + cost)
            if len(self._windows) >= self._next_sweep_size:
                self._sweep(windows[0].now_ms)
        return decisions

    def _used(self, bucket: str, window: Window) -> int:
        start, _, used = self._windows.get(bucket, (window.start_ms, window.end_ms, 0))
        return used if start == window.start_ms else 0

    def _sweep(self, now_ms: int) -> None:
        self._windows = {bucket: entry for bucket, entry in self._windows.items() if entry[1] > now_ms}
        # Sweep again only once the table has doubled over what survived: amortized O(1) per hit.
        self._next_sweep_size = max(self._sweep_threshold, 2 * len(self._windows))

    def __len__(self) -> int:
        """How many buckets are held."""
        return len(self._windows)

    async def ping(self) -> bool:
        return True

    async def close(self) -> None:
        self._windows.clear()
