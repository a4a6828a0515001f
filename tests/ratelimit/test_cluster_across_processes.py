"""Two real `keystile serve` processes on one PostgreSQL and a three-master Redis Cluster, each given a different
node's URL: rate limits stay exact across them, and key changes reach the other process through the cluster."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests import backends
from tests.conftest import TEST_SECRET_KEY
from tests.process import KeystileServer, register_and_issue_key
from tests.ratelimit.conftest import RedisClusterServers
from tests.ratelimit.test_across_processes import LONG_WINDOW, assert_exactly_the_limit_admitted, burst, stop_all

pytestmark = [pytest.mark.process, pytest.mark.postgres, pytest.mark.redis]

# Well under the key cache's 10 s TTL: a change seen sooner came through pub/sub, not by the entry expiring.
BROADCAST_SECONDS = 5.0


@pytest.fixture
def servers(cluster: RedisClusterServers, tmp_path: Path) -> Iterator[list[KeystileServer]]:
    database = backends.fresh_postgres_database(f"{backends.POSTGRES_DATABASE}_cluster")
    started: list[KeystileServer] = []
    try:
        for url in cluster.urls[:2]:
            env = {"KEYSTILE_DATABASE_URL": database, "KEYSTILE_REDIS_URL": url, "KEYSTILE_SECRET_KEY": TEST_SECRET_KEY}
            started.append(KeystileServer(env, tmp_path))
            started[-1].start()
        yield started
    finally:
        stop_all(started)
    for server in started:
        assert "Traceback" not in server.log, server.log


@pytest.mark.parametrize("limit", [5, 1000])
async def test_rate_limit_admits_exactly_the_limit_across_two_processes_on_a_cluster(
    servers: list[KeystileServer], limit: int
) -> None:
    _, created = register_and_issue_key(servers[0].url, rate_limit={"limit": limit, "window_seconds": LONG_WINDOW})

    responses = await burst(servers, created["key"], 3 * limit)

    assert_exactly_the_limit_admitted(responses, limit)


async def test_a_raised_limit_reaches_the_process_on_another_node_through_pub_sub(
    servers: list[KeystileServer],
) -> None:
    headers, created = register_and_issue_key(servers[0].url, rate_limit={"limit": 5, "window_seconds": LONG_WINDOW})
    first = await burst(servers, created["key"], 15)
    assert [r.status_code for r in first].count(200) == 5

    async with httpx.AsyncClient(timeout=10.0) as http:
        patched = await http.patch(
            f"{servers[0].url}/keys/{created['id']}",
            json={"rate_limit": {"limit": 8, "window_seconds": LONG_WINDOW}},
            headers=headers,
        )
        assert patched.status_code == 200, patched.text
        deadline = time.monotonic() + BROADCAST_SECONDS
        while True:  # a refused request costs nothing, so polling does not spend the new units
            response = await http.get(f"{servers[1].url}/data/export", headers={"X-API-Key": created["key"]})
            if response.status_code == 200 or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.05)  # waiting for another process's broadcast, bounded by the deadline above
    assert response.status_code == 200, "the change did not reach the second process through the cluster"
    rest = await burst(servers, created["key"], 10)
    assert [r.status_code for r in rest].count(200) == 2  # 8 in all
