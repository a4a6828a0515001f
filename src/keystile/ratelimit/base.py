"""The limiter interface and its arithmetic, shared by both backends.

Algorithm: a fixed window per bucket, aligned to multiples of the window length on the keystile clock. Each decision
adds `cost` to the window's counter only if the sum stays within the limit, so exactly `limit` units are admitted per
window and a refused request costs the client nothing. Error bound: a client that spends its whole limit at the end
of one window and again at the start of the next gets up to 2 x limit within one window length; never more.
`Retry-After` is the end of the current window, the first moment a request can be admitted.
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import NamedTuple, Protocol


class Decision(NamedTuple):
    allowed: bool
    limit: int
    window_seconds: int
    remaining: int
    reset_seconds: int  # until the current window ends and `remaining` returns to `limit`

    @property
    def retry_after(self) -> int:
        return max(1, self.reset_seconds)


class Window(NamedTuple):
    """Where `now` falls for a window length: the window's start (as an integer, for keys) and its end.

    NamedTuples here and in Decision: built on every rate-limited request, cheaper than dataclasses (bench_verify).
    """

    start_ms: int
    end_ms: int
    now_ms: int
    seconds: int

    @classmethod
    def at(cls, now: datetime, window_seconds: int) -> Window:
        now_ms = int(now.timestamp() * 1000)
        length = window_seconds * 1000
        start = now_ms - now_ms % length
        return cls(start_ms=start, end_ms=start + length, now_ms=now_ms, seconds=window_seconds)

    @property
    def reset_seconds(self) -> int:
        # Rounded up: telling a client to come back a fraction early would be a dishonest Retry-After.
        return math.ceil((self.end_ms - self.now_ms) / 1000)

    def decide(self, *, used_before: int, limit: int, cost: int) -> tuple[Decision, int]:
        """The decision for a request of `cost`, and the counter's value afterwards."""
        allowed = used_before + cost <= limit
        used_after = used_before + cost if allowed else used_before
        decision = Decision(allowed, limit, self.seconds, max(0, limit - used_after), self.reset_seconds)
        return decision, used_after


class Counter(NamedTuple):
    """One limit a request must pass: its bucket (whose window counter it adds to) and the policy's numbers."""

    bucket: str
    limit: int
    window_seconds: int


def decide_together(windows: list[Window], counters: list[Counter], used: list[int], cost: int) -> list[Decision]:
    """Decisions on counters a request must pass all at once (a key's limit and its identity's): `cost` is added to
    every counter or to none, so a refusal by one spends nothing of the others. Each decision's `allowed` says whether
    that counter alone had room; the request is admitted when all did."""
    admitted = all(u + cost <= c.limit for u, c in zip(used, counters, strict=True))
    decisions = []
    for window, counter, used_before in zip(windows, counters, used, strict=True):
        allowed = used_before + cost <= counter.limit
        used_after = used_before + cost if admitted else used_before
        decisions.append(
            Decision(allowed, counter.limit, window.seconds, max(0, counter.limit - used_after), window.reset_seconds)
        )
    return decisions


class LimiterUnavailableError(Exception):
    """The backend could not decide (Redis unreachable); the caller applies RATE_LIMIT_FAILURE."""


class RateLimiter(Protocol):
    async def hit(self, bucket: str, *, limit: int, window_seconds: int, cost: int, now: datetime) -> Decision:
        """Add `cost` to `bucket`'s current window if it fits; `cost=0` only reads the state."""
        ...

    async def hit_all(self, counters: list[Counter], *, cost: int, now: datetime) -> list[Decision]:
        """Add `cost` to every counter's current window if it fits in all of them, else to none
        (`decide_together`); atomically, in one round trip."""
        ...

    async def ping(self) -> bool: ...

    async def close(self) -> None: ...
