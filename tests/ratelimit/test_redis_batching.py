"""The Redis limiter sends the decisions of one event-loop turn as one script call; each stays exact.

Real Redis throughout: the shared one (`redis_url`) for decisions, and a private `redis-server` on a free port for the
outage (`own_redis`), so stopping it never disturbs the Redis other tests use.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest

from keystile.ratelimit.base import Decision, LimiterUnavailableError
from keystile.ratelimit.redis import RedisRateLimiter
from tests.ratelimit.conftest import CountingRedis, RedisServer

pytestmark = pytest.mark.redis

# 2030-01-01T00:00:00Z: on a window boundary, so no test straddles two windows.
NOW = datetime(2030, 1, 1, tzinfo=UTC)
WINDOW = 60


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[CountingRedis]:
    connection = CountingRedis.from_url(redis_url, socket_timeout=0.5, socket_connect_timeout=0.5)
    assert isinstance(connection, CountingRedis)  # from_url is typed as returning the base class
    yield connection
    await connection.aclose()


async def hit(limiter: RedisRateLimiter, bucket: str, limit: int, cost: int = 1) -> Decision:
    return await limiter.hit(bucket, limit=limit, window_seconds=WINDOW, cost=cost, now=NOW)


async def test_fifty_concurrent_hits_on_a_limit_of_twenty_admit_exactly_twenty_in_one_script_call(
    client: CountingRedis,
) -> None:
    limiter = RedisRateLimiter(client)

    decisions = await asyncio.gather(*(hit(limiter, "key:1", limit=20) for _ in range(50)))

    admitted = [d for d in decisions if d.allowed]
    assert len(admitted) == 20
    assert sorted(d.remaining for d in admitted) == list(range(20))
    assert {d.remaining for d in decisions if not d.allowed} == {0}
    assert client.script_calls == 1
    assert (await hit(limiter, "key:1", limit=20, cost=0)).remaining == 0


async def test_decisions_on_different_buckets_in_one_batch_are_independent(client: CountingRedis) -> None:
    limiter = RedisRateLimiter(client)

    narrow, wide, costly = await asyncio.gather(
        asyncio.gather(*(hit(limiter, "key:narrow", limit=1) for _ in range(3))),
        asyncio.gather(*(hit(limiter, "key:wide", limit=5) for _ in range(3))),
        hit(limiter, "key:costly", limit=5, cost=6),
    )

    assert sorted(d.allowed for d in narrow) == [False, False, True]
    assert all(d.allowed for d in wide)
    assert sorted(d.remaining for d in wide) == [2, 3, 4]
    assert (costly.allowed, costly.remaining) == (False, 5)
    assert client.script_calls == 1


async def test_decisions_go_on_after_script_flush_without_counting_twice(client: CountingRedis) -> None:
    limiter = RedisRateLimiter(client)
    assert (await hit(limiter, "key:1", limit=10)).remaining == 9

    await client.script_flush()
    after_flush = await asyncio.gather(*(hit(limiter, "key:1", limit=10) for _ in range(3)))

    assert sorted(d.remaining for d in after_flush) == [6, 7, 8]
    assert (await hit(limiter, "key:1", limit=10, cost=0)).remaining == 6


async def test_a_waiter_that_is_cancelled_does_not_disturb_the_rest_of_its_batch(client: CountingRedis) -> None:
    limiter = RedisRateLimiter(client)
    gone = asyncio.ensure_future(hit(limiter, "key:1", limit=10))
    staying = asyncio.ensure_future(hit(limiter, "key:1", limit=10))
    await asyncio.sleep(0)  # both have joined the batch

    gone.cancel()

    assert (await staying).allowed
    assert gone.cancelled()


async def test_every_waiter_of_a_batch_against_a_stopped_server_gets_limiter_unavailable(
    own_redis: RedisServer,
) -> None:
    limiter = RedisRateLimiter.from_url(own_redis.url)
    try:
        assert (await hit(limiter, "key:1", limit=10)).allowed  # a pooled connection exists when the server goes
        own_redis.stop()

        outcomes = await asyncio.gather(
            *(hit(limiter, f"key:{i % 2}", limit=10) for i in range(5)), return_exceptions=True
        )

        assert all(isinstance(outcome, LimiterUnavailableError) for outcome in outcomes), outcomes
        assert await limiter.ping() is False
    finally:
        await limiter.close()


async def test_a_flood_on_an_exhausted_window_costs_redis_nothing(client: CountingRedis) -> None:
    limiter = RedisRateLimiter(client)
    assert all(d.allowed for d in await asyncio.gather(*(hit(limiter, "key:1", limit=5) for _ in range(5))))
    assert client.script_calls == 1

    flood = await asyncio.gather(*(hit(limiter, "key:1", limit=5) for _ in range(1000)))
    read = await hit(limiter, "key:1", limit=5, cost=0)

    assert {(d.allowed, d.remaining, d.reset_seconds) for d in flood} == {(False, 0, WINDOW)}
    assert (read.allowed, read.remaining) == (True, 0)  # what Redis would answer for a counter at its limit
    assert client.script_calls == 1


async def test_an_exhausted_window_learnt_from_another_process_costs_one_call(client: CountingRedis) -> None:
    other, mine = RedisRateLimiter(client), RedisRateLimiter(client)
    await asyncio.gather(*(hit(other, "key:1", limit=3) for _ in range(3)))
    calls = client.script_calls

    for _ in range(100):  # one after another: each would be its own round trip
        assert not (await hit(mine, "key:1", limit=3)).allowed

    assert client.script_calls == calls + 1


async def test_a_raised_limit_or_a_new_window_asks_redis_again(client: CountingRedis) -> None:
    limiter = RedisRateLimiter(client)
    await asyncio.gather(*(hit(limiter, "key:1", limit=2) for _ in range(3)))

    raised = await asyncio.gather(*(hit(limiter, "key:1", limit=4) for _ in range(3)))  # a PATCH raised the limit
    next_window = await limiter.hit("key:1", limit=4, window_seconds=WINDOW, cost=1, now=NOW + timedelta(seconds=60))

    assert sorted(d.remaining for d in raised if d.allowed) == [0, 1]
    assert (next_window.allowed, next_window.remaining) == (True, 3)
