"""Fixed-window arithmetic under a fake clock, for the in-process and the Redis backend alike.

Windows are aligned to multiples of their length on the clock's epoch milliseconds, so every test starts its clock
exactly on a window boundary (`WINDOW_START`) and reasons in offsets from it.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from keystile.clock import FakeClock
from keystile.ratelimit.base import Decision, RateLimiter
from keystile.ratelimit.memory import MemoryRateLimiter
from keystile.ratelimit.redis import RedisRateLimiter

# 2030-01-01T00:00:00Z is a multiple of every window length used here (60 s, 10 s, 3600 s).
WINDOW_START = datetime(2030, 1, 1, tzinfo=UTC)
LIMIT = 5
WINDOW = 60


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.redis)])
async def limiter(request: pytest.FixtureRequest) -> AsyncIterator[RateLimiter]:
    backend: RateLimiter
    if request.param == "memory":
        backend = MemoryRateLimiter()
    else:
        backend = RedisRateLimiter.from_url(request.getfixturevalue("redis_url"))
    yield backend
    await backend.close()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(WINDOW_START)


async def hit(limiter: RateLimiter, clock: FakeClock, cost: int = 1, bucket: str = "key:1") -> Decision:
    return await limiter.hit(bucket, limit=LIMIT, window_seconds=WINDOW, cost=cost, now=clock())


async def test_exactly_limit_units_are_admitted_per_window(limiter: RateLimiter, clock: FakeClock) -> None:
    decisions = [await hit(limiter, clock) for _ in range(LIMIT + 3)]

    assert [d.allowed for d in decisions] == [True] * LIMIT + [False] * 3
    assert [d.remaining for d in decisions] == [4, 3, 2, 1, 0, 0, 0, 0]
    assert {(d.limit, d.window_seconds) for d in decisions} == {(LIMIT, WINDOW)}


@pytest.mark.parametrize(
    ("offset_seconds", "reset_seconds"),
    [
        pytest.param(0, 60, id="window-start"),
        pytest.param(15, 45, id="whole-second"),
        pytest.param(15.2, 45, id="fraction-rounds-up"),
        pytest.param(59.999, 1, id="last-millisecond"),
    ],
)
async def test_reset_seconds_counts_up_to_the_window_end_rounded_up(
    limiter: RateLimiter, clock: FakeClock, offset_seconds: float, reset_seconds: int
) -> None:
    clock.advance(offset_seconds)

    decision = await hit(limiter, clock)

    assert decision.allowed
    assert decision.reset_seconds == reset_seconds
    assert decision.retry_after == reset_seconds


async def test_a_refused_request_does_not_consume(limiter: RateLimiter, clock: FakeClock) -> None:
    first = await hit(limiter, clock, cost=4)
    too_big = await hit(limiter, clock, cost=2)
    fits = await hit(limiter, clock, cost=1)

    assert (first.allowed, first.remaining) == (True, 1)
    assert (too_big.allowed, too_big.remaining) == (False, 1)
    assert (fits.allowed, fits.remaining) == (True, 0)


async def test_a_cost_above_the_limit_is_refused_without_consuming(limiter: RateLimiter, clock: FakeClock) -> None:
    refused = await hit(limiter, clock, cost=LIMIT + 1)
    peek = await hit(limiter, clock, cost=0)

    assert (refused.allowed, refused.remaining) == (False, LIMIT)
    assert peek.remaining == LIMIT


async def test_cost_zero_peeks_without_consuming(limiter: RateLimiter, clock: FakeClock) -> None:
    await hit(limiter, clock, cost=2)

    peeks = [await hit(limiter, clock, cost=0) for _ in range(10)]
    after = await hit(limiter, clock, cost=3)

    assert {(p.allowed, p.remaining) for p in peeks} == {(True, 3)}
    assert (after.allowed, after.remaining) == (True, 0)
    exhausted_peek = await hit(limiter, clock, cost=0)
    assert (exhausted_peek.allowed, exhausted_peek.remaining) == (True, 0)


async def test_a_new_window_starts_fresh_exactly_at_the_boundary(limiter: RateLimiter, clock: FakeClock) -> None:
    clock.advance(30)
    await hit(limiter, clock, cost=LIMIT)
    clock.advance(30 - 0.001)
    last_millisecond = await hit(limiter, clock)
    clock.advance(0.001)
    boundary = await hit(limiter, clock)

    assert (last_millisecond.allowed, last_millisecond.reset_seconds) == (False, 1)
    assert (boundary.allowed, boundary.remaining, boundary.reset_seconds) == (True, LIMIT - 1, WINDOW)


async def test_buckets_are_counted_separately(limiter: RateLimiter, clock: FakeClock) -> None:
    await hit(limiter, clock, cost=LIMIT, bucket="key:1")

    other = await hit(limiter, clock, bucket="key:2")

    assert (other.allowed, other.remaining) == (True, LIMIT - 1)
    assert not (await hit(limiter, clock, bucket="key:1")).allowed


@pytest.mark.parametrize(
    "offset_seconds",
    [
        pytest.param(0, id="window-start"),
        pytest.param(0.5, id="half-second-in"),
        pytest.param(17, id="whole-second"),
        pytest.param(42.001, id="just-past-a-second"),
        pytest.param(59.5, id="last-half-second"),
    ],
)
async def test_retry_after_is_never_earlier_than_the_first_admission(
    limiter: RateLimiter, clock: FakeClock, offset_seconds: float
) -> None:
    clock.advance(offset_seconds)
    await hit(limiter, clock, cost=LIMIT)
    refused = await hit(limiter, clock)
    retry_after = refused.retry_after

    clock.advance(retry_after - 1)
    one_second_early = await hit(limiter, clock)
    clock.advance(1)
    on_time = await hit(limiter, clock)

    assert not refused.allowed
    assert retry_after == math.ceil(WINDOW - offset_seconds)
    assert not one_second_early.allowed
    assert on_time.allowed


# A model of the algorithm, independent of the implementation: the counter of the window containing `t`.
def _model_admits(limit: int, window_ms: int, steps: list[tuple[int, int]]) -> list[tuple[int, int, bool]]:
    used: dict[int, int] = {}
    now_ms = 0
    out = []
    for advance_ms, cost in steps:
        now_ms += advance_ms
        start = now_ms - now_ms % window_ms
        admitted = used.get(start, 0) + cost <= limit
        if admitted:
            used[start] = used.get(start, 0) + cost
        out.append((start, cost, admitted))
    return out


@given(
    limit=st.integers(min_value=1, max_value=20),
    window_seconds=st.sampled_from([1, 10, 60]),
    steps=st.lists(
        st.tuples(st.integers(min_value=0, max_value=30_000), st.integers(min_value=0, max_value=8)),
        max_size=60,
    ),
)
def test_memory_backend_never_admits_more_than_the_limit_in_one_window_and_matches_a_model(
    limit: int, window_seconds: int, steps: list[tuple[int, int]]
) -> None:
    async def run() -> list[Decision]:
        limiter = MemoryRateLimiter()
        clock = FakeClock(WINDOW_START)
        decisions = []
        for advance_ms, cost in steps:
            clock.now += timedelta(milliseconds=advance_ms)
            decisions.append(
                await limiter.hit("key:1", limit=limit, window_seconds=window_seconds, cost=cost, now=clock())
            )
        return decisions

    decisions = asyncio.run(run())
    expected = _model_admits(limit, window_seconds * 1000, steps)

    admitted_per_window: dict[int, int] = {}
    for decision, (start, cost, admitted) in zip(decisions, expected, strict=True):
        assert decision.allowed == admitted
        if decision.allowed:
            admitted_per_window[start] = admitted_per_window.get(start, 0) + cost
        assert decision.remaining == limit - admitted_per_window.get(start, 0)
    assert all(total <= limit for total in admitted_per_window.values())


@given(offset_ms=st.integers(min_value=0, max_value=WINDOW * 1000 - 1))
def test_memory_backend_retry_after_is_honest_at_any_millisecond(offset_ms: int) -> None:
    async def run() -> tuple[Decision, Decision, Decision]:
        limiter = MemoryRateLimiter()
        clock = FakeClock(WINDOW_START + timedelta(milliseconds=offset_ms))
        await limiter.hit("key:1", limit=1, window_seconds=WINDOW, cost=1, now=clock())
        refused = await limiter.hit("key:1", limit=1, window_seconds=WINDOW, cost=1, now=clock())
        clock.advance(refused.retry_after - 1)
        early = await limiter.hit("key:1", limit=1, window_seconds=WINDOW, cost=1, now=clock())
        clock.advance(1)
        on_time = await limiter.hit("key:1", limit=1, window_seconds=WINDOW, cost=1, now=clock())
        return refused, early, on_time

    refused, early, on_time = asyncio.run(run())

    assert not refused.allowed
    assert not early.allowed
    assert on_time.allowed
