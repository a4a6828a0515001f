"""Two real `keystile serve` processes on one PostgreSQL and one Redis: limits and quotas are exact across them."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests import backends
from tests.conftest import TEST_SECRET_KEY
from tests.process import KeystileServer, register_and_issue_key

pytestmark = [pytest.mark.process, pytest.mark.postgres, pytest.mark.redis]

# One window of a year: a burst that lasts a second cannot straddle a window boundary by accident.
LONG_WINDOW = 31_536_000
IN_FLIGHT = 100


@pytest.fixture
def shared_database() -> str:
    """This module's own PostgreSQL database, emptied; the servers migrate it."""
    return backends.fresh_postgres_database(f"{backends.POSTGRES_DATABASE}_procs")


@pytest.fixture
def servers(shared_database: str, redis_url: str, tmp_path: Path) -> Iterator[list[KeystileServer]]:
    env = {
        "KEYSTILE_DATABASE_URL": shared_database,
        "KEYSTILE_REDIS_URL": redis_url,
        "KEYSTILE_SECRET_KEY": TEST_SECRET_KEY,
    }
    started: list[KeystileServer] = []
    try:
        for _ in range(2):  # A migrates first; B then finds the schema current
            started.append(KeystileServer(env, tmp_path))
            started[-1].start()
        yield started
    finally:
        stop_all(started)
    for server in started:
        assert "Traceback" not in server.log, server.log


def stop_all(servers: list[KeystileServer]) -> None:
    """SIGTERM and a graceful exit, in which each process returns its unspent quota leases."""
    for server in servers:
        server.stop()


def issue_key(base_url: str, **body: Any) -> dict[str, Any]:
    return register_and_issue_key(base_url, **body)[1]


async def burst(servers: list[KeystileServer], key: str, count: int) -> list[httpx.Response]:
    """`count` concurrent requests with `key`, alternating between the servers, at most IN_FLIGHT at a time (httpx
    spends time quadratic in the number of requests queued for its pool, so the queue is kept out of it)."""
    gate = asyncio.Semaphore(IN_FLIGHT)
    async with httpx.AsyncClient(timeout=30.0, limits=httpx.Limits(max_connections=IN_FLIGHT)) as http:

        async def one(i: int) -> httpx.Response:
            async with gate:
                return await http.get(f"{servers[i % len(servers)].url}/data/export", headers={"X-API-Key": key})

        return await asyncio.gather(*(one(i) for i in range(count)))


async def quota_in_database(database_url: str, api_key_id: int) -> int | None:
    """`quota_remaining` of a key, read straight from the servers' database (no in-process app to ask)."""
    import asyncpg

    connection = await asyncpg.connect(database_url.replace("+asyncpg", ""), timeout=5)
    try:
        value = await connection.fetchval("SELECT quota_remaining FROM api_keys WHERE id = $1", api_key_id)
        return int(value) if value is not None else None
    finally:
        await connection.close()


def assert_exactly_the_limit_admitted(responses: list[httpx.Response], limit: int) -> None:
    admitted = [r for r in responses if r.status_code == 200]
    refused = [r for r in responses if r.status_code != 200]
    assert len(admitted) == limit
    assert {r.status_code for r in refused} == {429}
    assert {r.json()["detail"] for r in refused} == {"API key rate limit exceeded"}
    assert all(int(r.headers["Retry-After"]) >= 1 for r in refused)
    # One atomic counter: each admitted request saw a different remaining count, from limit - 1 down to 0.
    remaining = sorted(int(r.headers["RateLimit"].split("r=")[1].split(";")[0]) for r in admitted)
    assert remaining == list(range(limit))
    assert {r.headers["RateLimit-Policy"] for r in responses} == {f'"key";q={limit};w={LONG_WINDOW}'}


@pytest.mark.parametrize("limit", [5, 10, 1000])
async def test_rate_limit_admits_exactly_the_limit_across_two_processes(
    servers: list[KeystileServer], limit: int
) -> None:
    created = issue_key(servers[0].url, rate_limit={"limit": limit, "window_seconds": LONG_WINDOW})

    responses = await burst(servers, created["key"], 3 * limit)

    assert_exactly_the_limit_admitted(responses, limit)
    # Once exhausted, each process refuses from memory; another burst changes nothing.
    assert {r.status_code for r in await burst(servers, created["key"], 20)} == {429}


async def test_quota_admits_exactly_its_balance_across_two_processes(
    servers: list[KeystileServer], shared_database: str
) -> None:
    quota = 10
    created = issue_key(servers[0].url, quota=quota)

    responses = await burst(servers, created["key"], 3 * quota)
    second_burst = await burst(servers, created["key"], 4)
    stop_all(servers)  # each process returns its unspent lease on the way out

    statuses = [r.status_code for r in responses]
    assert statuses.count(200) == quota
    assert statuses.count(429) == 2 * quota
    assert {r.json()["detail"] for r in responses if r.status_code == 429} == {"API key quota exhausted"}
    assert all("Retry-After" not in r.headers for r in responses)
    assert {r.status_code for r in second_burst} == {429}
    assert await quota_in_database(shared_database, created["id"]) == 0
