"""Leases: far below its limit a counter is taken several units at a time, so most requests make no round trip; from
half the limit on, every decision is made in Redis, and no window admits more than its limit. Real Redis throughout.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest
import redis.asyncio

from keystile.ratelimit.base import Counter, Decision
from keystile.ratelimit.redis import KEY_PREFIX, LEASE_IDLE_SECONDS, RedisRateLimiter, lease_size
from tests.ratelimit.conftest import CountingRedis

pytestmark = pytest.mark.redis

NOW = datetime(2030, 1, 1, tzinfo=UTC)  # on a window boundary
WINDOW = 60
WINDOW_START_MS = int(NOW.timestamp() * 1000)


class FakeMonotonic:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def clients(redis_url: str) -> AsyncIterator[list[CountingRedis]]:
    """Two connections, as two processes would have (`redis_url` flushed the database)."""
    connections = []
    for _ in range(2):
        connection = CountingRedis.from_url(redis_url, socket_timeout=0.5, socket_connect_timeout=0.5)
        assert isinstance(connection, CountingRedis)
        connections.append(connection)
    yield connections
    for connection in connections:
        await connection.aclose()


async def hit(limiter: RedisRateLimiter, bucket: str, limit: int, cost: int = 1) -> Decision:
    return await limiter.hit(bucket, limit=limit, window_seconds=WINDOW, cost=cost, now=NOW)


async def stored(client: redis.asyncio.Redis, bucket: str) -> int:
    return int(await client.get(f"{KEY_PREFIX}{bucket}:{WINDOW_START_MS}") or 0)


def test_lease_size_is_a_sixty_fourth_of_the_limit_up_to_sixty_four_units_and_none_below_two() -> None:
    assert [lease_size(limit) for limit in (5, 127, 128, 1000, 4096, 10**9)] == [0, 0, 2, 15, 64, 64]


async def test_far_below_the_limit_one_round_trip_serves_a_whole_lease(clients: list[CountingRedis]) -> None:
    client = clients[0]
    limiter = RedisRateLimiter(client)

    decisions = [await hit(limiter, "key:far", limit=1_000_000) for _ in range(1000)]

    assert all(d.allowed for d in decisions)
    # Each admitted request holds its own place in the shared counter: remaining counts down by one, as without leases.
    assert [d.remaining for d in decisions] == list(range(999_999, 998_999, -1))
    assert client.script_calls == 16  # 1000 requests / (1 + 64 units) per round trip, rounded up
    assert 1000 <= await stored(client, "key:far") <= 1000 + 64


async def test_from_half_the_limit_on_every_request_is_decided_in_redis(clients: list[CountingRedis]) -> None:
    client = clients[0]
    limiter = RedisRateLimiter(client)

    decisions = [await hit(limiter, "key:near", limit=1000) for _ in range(1200)]

    admitted = [d for d in decisions if d.allowed]
    assert len(admitted) == 1000
    assert [d.remaining for d in admitted] == list(range(999, -1, -1))
    assert not any(d.allowed for d in decisions[1000:])
    assert await stored(client, "key:near") == 1000
    # Leases of 16 (1 + 15) up to half the limit (31 round trips for 496 units), then one per request up to the limit,
    # then none: the exhausted window is remembered.
    assert client.script_calls == 31 + 504


async def test_two_processes_interleaved_admit_exactly_the_limit_with_distinct_remaining_counts(
    clients: list[CountingRedis],
) -> None:
    limiters = [RedisRateLimiter(client) for client in clients]

    async def flood(limiter: RedisRateLimiter) -> list[Decision]:
        return list(await asyncio.gather(*(hit(limiter, "key:shared", limit=1000) for _ in range(1500))))

    a, b = await asyncio.gather(flood(limiters[0]), flood(limiters[1]))

    admitted = [d for d in a + b if d.allowed]
    assert len(admitted) == 1000
    assert sorted(d.remaining for d in admitted) == list(range(1000))
    assert await stored(clients[0], "key:shared") == 1000


async def test_shutdown_hands_back_what_a_lease_did_not_use(clients: list[CountingRedis]) -> None:
    client = clients[0]
    limiter = RedisRateLimiter(client)
    for _ in range(3):
        await hit(limiter, "key:closing", limit=1_000_000)
    assert await stored(client, "key:closing") == 1 + 64

    await limiter.close()

    assert await stored(clients[1], "key:closing") == 3


async def test_an_idle_lease_is_handed_back_with_a_later_batch(clients: list[CountingRedis]) -> None:
    client = clients[0]
    monotonic = FakeMonotonic()
    limiter = RedisRateLimiter(client, monotonic=monotonic)
    await hit(limiter, "key:idle", limit=1_000_000)
    await hit(limiter, "key:busy", limit=10)
    assert await stored(client, "key:idle") == 65  # still held: not idle yet

    monotonic.now += LEASE_IDLE_SECONDS
    await hit(limiter, "key:busy", limit=10)

    assert await stored(client, "key:idle") == 1
    # The next request takes a lease again, from the counter as it now stands.
    assert (await hit(limiter, "key:idle", limit=1_000_000)).remaining == 1_000_000 - 2


async def test_a_changed_limit_hands_back_the_old_lease_and_decides_on_the_new_one(
    clients: list[CountingRedis],
) -> None:
    client = clients[0]
    limiter = RedisRateLimiter(client)
    await hit(limiter, "key:patched", limit=1_000_000)
    assert await stored(client, "key:patched") == 65

    lowered = await hit(limiter, "key:patched", limit=2)

    # The old lease's 64 units went back in the same batch, before the new decision: 1 used + this one.
    assert (lowered.allowed, lowered.remaining) == (True, 0)
    assert await stored(client, "key:patched") == 2
    assert not (await hit(limiter, "key:patched", limit=2)).allowed


async def test_small_limits_and_counters_passed_together_are_never_leased(clients: list[CountingRedis]) -> None:
    client = clients[0]
    limiter = RedisRateLimiter(client)

    for _ in range(3):
        await hit(limiter, "key:small", limit=127)
        await limiter.hit_all(
            [Counter("{i1}key:2", 1_000_000, WINDOW), Counter("{i1}identity", 1_000_000, WINDOW)], cost=1, now=NOW
        )

    assert await stored(client, "key:small") == 3
    assert await stored(client, "{i1}identity") == 3
    assert client.script_calls == 6


async def test_units_leased_by_one_process_are_admitted_there_while_another_reaches_the_limit(
    clients: list[CountingRedis],
) -> None:
    """The bound of docs/RATE_LIMITS.md: while A holds unused units, B is refused short of the limit by exactly as
    many, and the window still admits exactly the limit once A uses them."""
    a, b = (RedisRateLimiter(client) for client in clients)
    await hit(a, "key:split", limit=1000)  # takes a lease: 1 + 15 units

    by_b = [await hit(b, "key:split", limit=1000) for _ in range(1100)]
    by_a = [await hit(a, "key:split", limit=1000) for _ in range(20)]

    assert sum(d.allowed for d in by_b) == 1000 - 16
    assert sum(d.allowed for d in by_a) == 15
    remaining = sorted(d.remaining for d in [*by_a, *by_b] if d.allowed)
    assert remaining == list(range(1000 - 1))  # 999 was the first request's, before the lists
    assert await stored(clients[0], "key:split") == 1000


async def test_a_lease_granted_to_a_request_that_was_cancelled_is_handed_back(clients: list[CountingRedis]) -> None:
    client = clients[0]
    limiter = RedisRateLimiter(client)
    asked = asyncio.ensure_future(hit(limiter, "key:gone", limit=1_000_000))
    await asyncio.sleep(0)  # the request joins the batch, which is sent on the next loop turn
    asked.cancel()

    await limiter.close()  # waits for the batch: Redis added 1 + 64 units, and the waiter is gone

    # The cancelled request's own unit stays counted (it may have been admitted); its lease went back.
    assert await stored(clients[1], "key:gone") == 1


async def test_shutdown_waits_for_leases_in_flight_before_handing_units_back(clients: list[CountingRedis]) -> None:
    client = clients[0]
    limiter = RedisRateLimiter(client)
    asked = asyncio.ensure_future(hit(limiter, "key:in-flight", limit=1_000_000))
    await asyncio.sleep(0)

    await limiter.close()

    assert (await asked).allowed
    assert await stored(clients[1], "key:in-flight") == 1


async def test_a_burst_waits_for_the_one_lease_asked_for_instead_of_each_making_a_round_trip(
    clients: list[CountingRedis],
) -> None:
    client = clients[0]
    limiter = RedisRateLimiter(client)

    decisions = await asyncio.gather(*(hit(limiter, "key:burst", limit=1_000_000) for _ in range(60)))

    assert all(d.allowed for d in decisions)
    assert sorted(d.remaining for d in decisions) == list(range(1_000_000 - 60, 1_000_000))
    assert client.script_calls == 1  # one request asked for 1 + 64 units; the other 59 were served from them
    assert await stored(client, "key:burst") == 65


async def test_past_half_the_limit_a_burst_is_decided_in_one_batch_after_one_refused_lease(
    clients: list[CountingRedis],
) -> None:
    client = clients[0]
    await client.set(f"{KEY_PREFIX}key:past-half:{WINDOW_START_MS}", 600)
    limiter = RedisRateLimiter(client)

    decisions = await asyncio.gather(*(hit(limiter, "key:past-half", limit=1000) for _ in range(500)))

    assert sum(d.allowed for d in decisions) == 400
    # The first asked for a lease and was refused (600 is past half of 1000); the rest, which waited for that answer,
    # went together in one batch, and no request asks for a lease again in this window.
    assert client.script_calls == 2
    assert await stored(client, "key:past-half") == 1000
