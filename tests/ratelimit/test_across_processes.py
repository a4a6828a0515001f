"""Two real `keystile serve` processes on one PostgreSQL and one Redis: limits and quotas are exact across them."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests import backends
from tests.conftest import TEST_SECRET_KEY
from tests.helpers import PASSWORD

pytestmark = [pytest.mark.process, pytest.mark.postgres, pytest.mark.redis]

KEYSTILE = Path(sys.executable).with_name("keystile")
READY_SECONDS = 60.0
DATABASE = f"{backends.POSTGRES_DATABASE}_procs"
DATABASE_URL = backends.POSTGRES_URL.rsplit("/", 1)[0] + f"/{DATABASE}"
# One window of a year: a burst that lasts a second cannot straddle a window boundary by accident.
LONG_WINDOW = 31_536_000


class Server:
    """One `keystile serve` on a free port, its output kept in a file for failure messages."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        with log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [str(KEYSTILE), "serve", "--host", "127.0.0.1", "--port", str(self.port)],
                env=os.environ | {"KEYSTILE_LOG_LEVEL": "warning"} | env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + READY_SECONDS
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"keystile serve exited with {self.process.returncode}:\n{self.output()}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=1.0).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.05)  # readiness polling of a child process, bounded by the deadline above
        self.stop()
        pytest.fail(f"keystile serve was not ready within {READY_SECONDS} s:\n{self.output()}")

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        """SIGTERM and a graceful exit, in which the process returns its unspent quota leases."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@pytest.fixture
def shared_database() -> str:
    """This module's own PostgreSQL database, created when missing and emptied; the servers migrate it."""

    async def reset() -> None:
        import asyncpg

        admin = await asyncpg.connect(backends.POSTGRES_ADMIN_URL, timeout=5)
        try:
            if not await admin.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", DATABASE):
                await admin.execute(f'CREATE DATABASE "{DATABASE}"')
        finally:
            await admin.close()
        connection = await asyncpg.connect(DATABASE_URL.replace("+asyncpg", ""), timeout=5)
        try:
            await connection.execute("DROP SCHEMA public CASCADE; CREATE SCHEMA public;")
        finally:
            await connection.close()

    try:
        backends.run(reset())
    except Exception as error:
        backends.unavailable("PostgreSQL", error)
    return DATABASE_URL


@pytest.fixture
def servers(shared_database: str, redis_url: str, tmp_path: Path) -> Iterator[list[Server]]:
    env = {
        "KEYSTILE_DATABASE_URL": shared_database,
        "KEYSTILE_REDIS_URL": redis_url,
        "KEYSTILE_SECRET_KEY": TEST_SECRET_KEY,
    }
    started: list[Server] = []
    try:
        started.append(Server(env, tmp_path / "a.log"))  # A migrates first; B then finds the schema current
        started.append(Server(env, tmp_path / "b.log"))
        yield started
    finally:
        for server in started:
            server.stop()
    for server in started:
        assert "Traceback" not in server.output(), server.output()


def stop_all(servers: list[Server]) -> None:
    for server in servers:
        server.stop()


def issue_key(base_url: str, **body: Any) -> dict[str, Any]:
    with httpx.Client(base_url=base_url, timeout=10.0) as http:
        email = "alice@example.com"
        assert http.post("/auth/register", json={"email": email, "password": PASSWORD}).status_code == 201
        token = http.post("/auth/token", data={"username": email, "password": PASSWORD})
        assert token.status_code == 200, token.text
        headers = {"Authorization": f"Bearer {token.json()['access_token']}"}
        created = http.post("/keys/", json={"name": "shared", **body}, headers=headers)
        assert created.status_code == 201, created.text
        return dict(created.json())


async def burst(servers: list[Server], key: str, count: int) -> list[httpx.Response]:
    """`count` concurrent requests with `key`, alternating between the servers."""
    async with httpx.AsyncClient(timeout=30.0) as http:
        return await asyncio.gather(
            *(
                http.get(f"{servers[i % len(servers)].url}/data/export", headers={"X-API-Key": key})
                for i in range(count)
            )
        )


async def stored_quota(database_url: str, api_key_id: int) -> int | None:
    import asyncpg

    connection = await asyncpg.connect(database_url.replace("+asyncpg", ""), timeout=5)
    try:
        value = await connection.fetchval("SELECT quota_remaining FROM api_keys WHERE id = $1", api_key_id)
        return int(value) if value is not None else None
    finally:
        await connection.close()


async def test_rate_limit_admits_exactly_the_limit_across_two_processes(servers: list[Server]) -> None:
    limit = 10
    created = issue_key(servers[0].url, rate_limit={"limit": limit, "window_seconds": LONG_WINDOW})

    responses = await burst(servers, created["key"], 3 * limit)

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


async def test_quota_admits_exactly_its_balance_across_two_processes(
    servers: list[Server], shared_database: str
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
    assert await stored_quota(shared_database, created["id"]) == 0
