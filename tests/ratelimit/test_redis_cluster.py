"""The Redis limiter on a real three-master Redis Cluster, started by the test: found from any node's URL, a batch
split by hash slot, every decision exactly as on a single Redis."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import pytest
from redis.asyncio.cluster import RedisCluster
from redis.crc import key_slot

from keystile.ratelimit.base import Decision
from keystile.ratelimit.redis import KEY_PREFIX, RedisRateLimiter
from tests.ratelimit.conftest import RedisClusterServers

pytestmark = pytest.mark.redis

NOW = datetime(2030, 1, 1, tzinfo=UTC)  # on a window boundary
WINDOW = 60


class CountingCluster(RedisCluster):
    """Counts script calls, i.e. round trips of decisions."""

    script_calls = 0

    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        if args[0] in ("EVALSHA", "EVAL"):
            self.script_calls += 1
        return await super().execute_command(*args, **kwargs)


@pytest.fixture
async def client(cluster: RedisClusterServers) -> AsyncIterator[CountingCluster]:
    connection = CountingCluster.from_url(cluster.urls[0])
    assert isinstance(connection, CountingCluster)
    await connection.initialize()  # as RedisRateLimiter.from_url does: redis-py's lazy one races under concurrency
    yield connection
    await connection.aclose()


async def hit(limiter: RedisRateLimiter, bucket: str, limit: int, cost: int = 1) -> Decision:
    return await limiter.hit(bucket, limit=limit, window_seconds=WINDOW, cost=cost, now=NOW)


def counter(bucket: str) -> str:
    return f"{KEY_PREFIX}{bucket}:{int(NOW.timestamp() * 1000)}"


async def test_a_url_naming_any_node_is_found_to_be_a_cluster(cluster: RedisClusterServers) -> None:
    for url in cluster.urls:
        limiter = RedisRateLimiter.from_url(url)
        try:
            decisions = await asyncio.gather(*(hit(limiter, f"key:{i}", limit=5) for i in range(30)))
            # Thirty counters spread over three shards: a client of the one node would get MOVED for most.
            assert all(d.allowed and d.remaining == 4 for d in decisions)
            assert await limiter.ping() is True
        finally:
            await limiter.close()
        cluster.flush()


async def test_buckets_on_every_shard_in_one_batch_get_one_script_call_per_slot(client: CountingCluster) -> None:
    limiter = RedisRateLimiter(client)
    buckets = [f"key:{i}" for i in range(12)]
    nodes = {client.get_node_from_key(counter(bucket)).name for bucket in buckets}
    assert len(nodes) == RedisClusterServers.SIZE  # the batch really spans the three shards

    decisions = await asyncio.gather(*(hit(limiter, bucket, limit=3) for bucket in buckets for _ in range(5)))

    for i in range(len(buckets)):
        mine = decisions[5 * i : 5 * i + 5]
        assert sorted(d.remaining for d in mine if d.allowed) == [0, 1, 2]
        assert sum(not d.allowed for d in mine) == 2
    assert client.script_calls == len({key_slot(counter(bucket).encode()) for bucket in buckets})


async def test_fifty_concurrent_hits_on_a_limit_of_twenty_admit_exactly_twenty_in_one_script_call(
    client: CountingCluster,
) -> None:
    limiter = RedisRateLimiter(client)

    decisions = await asyncio.gather(*(hit(limiter, "key:1", limit=20) for _ in range(50)))

    assert sorted(d.remaining for d in decisions if d.allowed) == list(range(20))
    assert client.script_calls == 1


async def test_two_limiters_on_different_nodes_share_one_exact_count(cluster: RedisClusterServers) -> None:
    """Two processes in effect: separate clients, connected through different nodes."""
    first, second = RedisRateLimiter.from_url(cluster.urls[0]), RedisRateLimiter.from_url(cluster.urls[2])
    try:
        decisions = await asyncio.gather(
            *(hit(limiter, f"key:{b}", limit=7) for limiter in (first, second) for b in range(10) for _ in range(10))
        )
    finally:
        await first.close()
        await second.close()

    for b in range(10):
        mine = [d for i, d in enumerate(decisions) if (i // 10) % 10 == b]
        assert sorted(d.remaining for d in mine if d.allowed) == list(range(7))
