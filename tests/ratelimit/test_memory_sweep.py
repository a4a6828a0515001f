"""The embedded limiter's memory stays bounded by live windows, whatever bucket names clients make up."""

from __future__ import annotations

from keystile.clock import FakeClock
from keystile.ratelimit.memory import MemoryRateLimiter


async def test_ended_windows_are_swept_once_the_table_passes_the_threshold() -> None:
    clock = FakeClock()
    limiter = MemoryRateLimiter(sweep_threshold=100)
    for number in range(99):
        await limiter.hit(f"login:email:user{number}", limit=5, window_seconds=60, cost=1, now=clock())
    assert len(limiter) == 99
    clock.advance(120)
    await limiter.hit("login:email:fresh", limit=5, window_seconds=60, cost=1, now=clock())
    assert len(limiter) == 1


async def test_live_windows_survive_a_sweep_and_keep_their_counts() -> None:
    clock = FakeClock()
    limiter = MemoryRateLimiter(sweep_threshold=10)
    for _ in range(3):
        await limiter.hit("key:1", limit=3, window_seconds=3600, cost=1, now=clock())
    for number in range(20):
        await limiter.hit(f"short:{number}", limit=5, window_seconds=1, cost=1, now=clock())
    clock.advance(2)
    for number in range(20, 40):
        await limiter.hit(f"short:{number}", limit=5, window_seconds=1, cost=1, now=clock())
    decision = await limiter.hit("key:1", limit=3, window_seconds=3600, cost=1, now=clock())
    assert not decision.allowed
    assert len(limiter) <= 21


async def test_a_peek_at_an_unseen_bucket_stores_nothing() -> None:
    limiter = MemoryRateLimiter()
    decision = await limiter.hit(
        "login:email:nobody@example.com", limit=10, window_seconds=900, cost=0, now=FakeClock()()
    )
    assert decision.allowed
    assert decision.remaining == 10
    assert len(limiter) == 0
