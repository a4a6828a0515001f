"""Real `keystile serve` processes: a revoke crosses instances within a second, and SIGTERM loses no recorded use."""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests import backends
from tests.conftest import TEST_SECRET_KEY
from tests.helpers import PASSWORD

pytestmark = pytest.mark.process

KEYSTILE = Path(sys.executable).with_name("keystile")
READY_SECONDS = 60.0
REVOKE_DEADLINE_SECONDS = 1.0
MULTI_DATABASE = f"{backends.POSTGRES_DATABASE}_multi"
MULTI_POSTGRES_URL = backends.POSTGRES_URL.rsplit("/", 1)[0] + f"/{MULTI_DATABASE}"


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
        self._wait_ready()

    def _wait_ready(self) -> None:
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

    def stop(self) -> int:
        """SIGTERM, then wait for a graceful exit; the exit status."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[list[Server]]:
    started: list[Server] = []
    yield started
    for server in started:
        server.stop()


def issue_key(base_url: str, email: str = "alice@example.com") -> tuple[dict[str, str], dict[str, object]]:
    with httpx.Client(base_url=base_url, timeout=10.0) as http:
        assert http.post("/auth/register", json={"email": email, "password": PASSWORD}).status_code == 201
        token = http.post("/auth/token", data={"username": email, "password": PASSWORD})
        assert token.status_code == 200, token.text
        headers = {"Authorization": f"Bearer {token.json()['access_token']}"}
        created = http.post("/keys/", json={"name": "shared"}, headers=headers)
        assert created.status_code == 201, created.text
        return headers, created.json()


@pytest.fixture
def shared_postgres() -> str:
    async def reset() -> None:
        import asyncpg

        admin = await asyncpg.connect(backends.POSTGRES_ADMIN_URL, timeout=5)
        try:
            if not await admin.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", MULTI_DATABASE):
                await admin.execute(f'CREATE DATABASE "{MULTI_DATABASE}"')
        finally:
            await admin.close()
        connection = await asyncpg.connect(MULTI_POSTGRES_URL.replace("+asyncpg", ""), timeout=5)
        try:
            await connection.execute("DROP SCHEMA public CASCADE; CREATE SCHEMA public;")
        finally:
            await connection.close()

    try:
        backends.run(reset())
    except Exception as error:
        backends.unavailable("PostgreSQL", error)
    return MULTI_POSTGRES_URL


@pytest.mark.postgres
@pytest.mark.redis
def test_revoke_on_one_instance_is_refused_by_another_within_a_second(
    servers: list[Server], shared_postgres: str, redis_url: str, tmp_path: Path
) -> None:
    env = {
        "KEYSTILE_DATABASE_URL": shared_postgres,
        "KEYSTILE_REDIS_URL": redis_url,
        "KEYSTILE_SECRET_KEY": TEST_SECRET_KEY,
    }
    servers.append(Server(env, tmp_path / "a.log"))  # A migrates first; B then finds the schema current
    servers.append(Server(env, tmp_path / "b.log"))
    a, b = servers
    headers, created = issue_key(a.url)
    key = {"X-API-Key": str(created["key"])}

    with httpx.Client(timeout=2.0) as http:
        assert http.get(f"{b.url}/data/export", headers=key).status_code == 200  # now cached in B
        assert http.get(f"{b.url}/data/export", headers=key).status_code == 200

        revoked = http.post(f"{a.url}/keys/{created['id']}/revoke", headers=headers)
        assert revoked.status_code == 200, revoked.text
        revoked_at = time.monotonic()
        statuses = []
        while time.monotonic() - revoked_at <= REVOKE_DEADLINE_SECONDS:
            statuses.append(http.get(f"{b.url}/data/export", headers=key).status_code)
            if statuses[-1] != 200:
                break
        elapsed = time.monotonic() - revoked_at

    assert statuses[-1] == 401, f"B still accepted the revoked key after {elapsed:.3f} s: {statuses}"
    assert elapsed <= REVOKE_DEADLINE_SECONDS


def test_sigterm_flushes_every_recorded_use(servers: list[Server], tmp_path: Path) -> None:
    database = tmp_path / "keystile.db"
    env = {"KEYSTILE_DATABASE_URL": f"sqlite+aiosqlite:///{database}", "KEYSTILE_SECRET_KEY": TEST_SECRET_KEY}
    servers.append(Server(env, tmp_path / "server.log"))
    server = servers[0]
    _, created = issue_key(server.url)
    uses = 37
    with httpx.Client(base_url=server.url, timeout=5.0) as http:
        for _ in range(uses):
            assert http.get("/data/export", headers={"X-API-Key": str(created["key"])}).status_code == 200

    # uvicorn shuts down gracefully, then re-raises the signal it caught, so the exit status is "killed by SIGTERM".
    assert server.stop() in (0, -signal.SIGTERM), server.output()
    assert "Traceback" not in server.output()

    with sqlite3.connect(database) as connection:
        use_count, last_used_at = connection.execute(
            "SELECT use_count, last_used_at FROM api_keys WHERE id = ?", (created["id"],)
        ).fetchone()
    assert use_count == uses
    assert last_used_at is not None
