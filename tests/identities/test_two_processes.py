"""An identity's rate limit and quota are exact across two real `keystile serve` processes on one PostgreSQL and one
Redis, with the identity's three keys and both processes taking the same burst (API.md section 8)."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from tests import backends
from tests.conftest import TEST_SECRET_KEY
from tests.helpers import EXPORT, PASSWORD
from tests.process import KeystileServer
from tests.ratelimit.test_across_processes import LONG_WINDOW, stop_all

pytestmark = [pytest.mark.process, pytest.mark.postgres, pytest.mark.redis]

KEYS = 3
IN_FLIGHT = 100  # as in test_across_processes: httpx slows down quadratically with requests queued for its pool


@pytest.fixture
def database() -> str:
    """This module's own PostgreSQL database, emptied; the servers migrate it."""
    return backends.fresh_postgres_database(f"{backends.POSTGRES_DATABASE}_identity_procs")


@pytest.fixture
def env(database: str, redis_url: str) -> dict[str, str]:
    return {"KEYSTILE_DATABASE_URL": database, "KEYSTILE_REDIS_URL": redis_url, "KEYSTILE_SECRET_KEY": TEST_SECRET_KEY}


@pytest.fixture
def servers(env: dict[str, str], tmp_path: Path) -> Iterator[list[KeystileServer]]:
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


def identity_with_keys(base_url: str, **identity: Any) -> tuple[dict[str, str], dict[str, Any], list[str]]:
    """Register a user on a running server, create an identity with `identity`'s limits and KEYS keys naming it;
    (bearer headers, the identity as created, the raw keys)."""
    email = "customer-admin@example.com"
    with httpx.Client(base_url=base_url, timeout=10.0) as http:
        assert http.post("/auth/register", json={"email": email, "password": PASSWORD}).status_code == 201
        token = http.post("/auth/token", data={"username": email, "password": PASSWORD})
        assert token.status_code == 200, token.text
        headers = {"Authorization": f"Bearer {token.json()['access_token']}"}
        created = http.post("/identities", json={"external_id": "acme", **identity}, headers=headers)
        assert created.status_code == 201, created.text
        keys = []
        for i in range(KEYS):
            key = http.post("/keys/", json={"name": f"k{i}", "identity_id": created.json()["id"]}, headers=headers)
            assert key.status_code == 201, key.text
            assert key.json()["identity_id"] == created.json()["id"]
            keys.append(str(key.json()["key"]))
        return headers, dict(created.json()), keys


async def burst(servers: list[KeystileServer], keys: list[str], count: int) -> list[tuple[int, int, httpx.Response]]:
    """`count` concurrent requests, request i to server i % 2 with key i % 3, so every key is used on every server;
    (server index, key index, response) for each."""
    gate = asyncio.Semaphore(IN_FLIGHT)
    # Idle connections are dropped after 1 s, well before uvicorn's 5 s keep-alive timeout: a request sent on a
    # connection the server is closing at that moment fails with "Server disconnected" (seen on a loaded machine).
    limits = httpx.Limits(max_connections=IN_FLIGHT, keepalive_expiry=1.0)
    async with httpx.AsyncClient(timeout=30.0, limits=limits) as http:

        async def one(i: int) -> tuple[int, int, httpx.Response]:
            server, key = i % len(servers), i % len(keys)
            async with gate:
                response = await http.get(f"{servers[server].url}{EXPORT}", headers={"X-API-Key": keys[key]})
            return server, key, response

        return await asyncio.gather(*(one(i) for i in range(count)))


def remaining_of(response: httpx.Response) -> int:
    """`r` of the `RateLimit` field's one ("identity") item."""
    return int(response.headers["RateLimit"].split("r=")[1].split(";")[0])


def identity_counters(redis_url: str, identity_id: int) -> dict[str, int]:
    """The identity's rate-limit counters in Redis, by key (ratelimit/redis.py: one per window)."""
    with redis.Redis.from_url(redis_url) as connection:
        return {
            name.decode(): int(connection.get(name) or 0)
            for name in connection.scan_iter(match=f"keystile:rl:{{i{identity_id}}}*")
        }


async def stored_identity_quota(database_url: str, identity_id: int) -> int | None:
    import asyncpg

    connection = await asyncpg.connect(database_url.replace("+asyncpg", ""), timeout=5)
    try:
        value = await connection.fetchval("SELECT quota_remaining FROM identities WHERE id = $1", identity_id)
        return None if value is None else int(value)
    finally:
        await connection.close()


@pytest.mark.parametrize("limit", [5, 50, 200])
async def test_an_identity_rate_limit_admits_exactly_the_limit_across_two_processes_and_three_keys(
    servers: list[KeystileServer], redis_url: str, limit: int
) -> None:
    _, identity, keys = identity_with_keys(servers[0].url, rate_limit={"limit": limit, "window_seconds": LONG_WINDOW})

    answers = await burst(servers, keys, 3 * limit)

    admitted = [response for _, _, response in answers if response.status_code == 200]
    refused = [response for _, _, response in answers if response.status_code != 200]
    assert len(admitted) == limit
    assert {r.status_code for r in refused} == {429}
    assert {r.json()["detail"] for r in refused} == {"API key rate limit exceeded"}
    assert all(1 <= int(r.headers["Retry-After"]) <= LONG_WINDOW for r in refused)
    assert {r.headers["RateLimit-Policy"] for _, _, r in answers} == {f'"identity";q={limit};w={LONG_WINDOW}'}
    # One atomic counter for all keys and both processes: each admitted request saw a different remaining count.
    assert sorted(remaining_of(r) for r in admitted) == list(range(limit))
    assert {(server, key) for server, key, _ in answers} == {(s, k) for s in range(2) for k in range(KEYS)}
    # The state left: one counter, for the identity's current window, at exactly the limit; no key has its own.
    assert list(identity_counters(redis_url, identity["id"]).values()) == [limit]
    # Exhausted: a second burst, on every key and both processes, admits nothing and adds nothing.
    assert {r.status_code for _, _, r in await burst(servers, keys, 12)} == {429}
    assert list(identity_counters(redis_url, identity["id"]).values()) == [limit]


@pytest.mark.parametrize("quota", [5, 50, 200])
async def test_an_identity_quota_admits_exactly_its_balance_across_two_processes_and_survives_sigterm(
    servers: list[KeystileServer], env: dict[str, str], database: str, tmp_path: Path, quota: int
) -> None:
    headers, identity, keys = identity_with_keys(servers[0].url, quota=quota)

    answers = await burst(servers, keys, 3 * quota)
    again = await burst(servers, keys, 12)
    stopped = [server.stop() for server in servers]  # SIGTERM: each returns its unspent lease on the way out

    statuses = [response.status_code for _, _, response in answers]
    assert statuses.count(200) == quota
    assert statuses.count(429) == 2 * quota
    refused = [response for _, _, response in answers if response.status_code == 429]
    assert {r.json()["detail"] for r in refused} == {"API key quota exhausted"}
    assert all("Retry-After" not in r.headers for r in refused)  # waiting does not refill a quota
    assert {r.status_code for _, _, r in again} == {429}
    # uvicorn shuts down gracefully, then re-raises the signal it caught.
    assert all(code in (0, -signal.SIGTERM) for code in stopped), [s.log for s in servers]
    assert await stored_identity_quota(database, identity["id"]) == 0

    with KeystileServer(env, tmp_path) as fresh:  # holds no lease: it reports the row as stored
        async with httpx.AsyncClient(base_url=fresh.url, timeout=10.0) as http:
            shown = await http.get(f"/identities/{identity['id']}", headers=headers)
    assert shown.status_code == 200, shown.text
    assert (shown.json()["id"], shown.json()["quota_remaining"]) == (identity["id"], 0)
    assert "Traceback" not in fresh.log, fresh.log
