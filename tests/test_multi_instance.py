"""Real `keystile serve` processes: a revoke crosses instances within a second, and SIGTERM loses no recorded use."""

from __future__ import annotations

import signal
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests import backends
from tests.conftest import TEST_SECRET_KEY
from tests.process import KeystileServer, register_and_issue_key

pytestmark = pytest.mark.process

REVOKE_DEADLINE_SECONDS = 1.0


@pytest.fixture
def servers() -> Iterator[list[KeystileServer]]:
    """Servers a test starts; all stopped afterwards."""
    started: list[KeystileServer] = []
    yield started
    for server in started:
        server.stop()


@pytest.fixture
def shared_postgres() -> str:
    return backends.fresh_postgres_database(f"{backends.POSTGRES_DATABASE}_multi")


def start(servers: list[KeystileServer], env: dict[str, str], cwd: Path) -> KeystileServer:
    server = KeystileServer(env, cwd)
    servers.append(server)
    server.start()
    return server


@pytest.mark.postgres
@pytest.mark.redis
def test_revoke_on_one_instance_is_refused_by_another_within_a_second(
    servers: list[KeystileServer], shared_postgres: str, redis_url: str, tmp_path: Path
) -> None:
    env = {
        "KEYSTILE_DATABASE_URL": shared_postgres,
        "KEYSTILE_REDIS_URL": redis_url,
        "KEYSTILE_SECRET_KEY": TEST_SECRET_KEY,
    }
    a = start(servers, env, tmp_path)  # A migrates first; B then finds the schema current
    b = start(servers, env, tmp_path)
    headers, created = register_and_issue_key(a.url)
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


def test_sigterm_flushes_every_recorded_use(servers: list[KeystileServer], tmp_path: Path) -> None:
    database = tmp_path / "keystile.db"
    env = {"KEYSTILE_DATABASE_URL": f"sqlite+aiosqlite:///{database}", "KEYSTILE_SECRET_KEY": TEST_SECRET_KEY}
    server = start(servers, env, tmp_path)
    _, created = register_and_issue_key(server.url)
    uses = 37
    with httpx.Client(base_url=server.url, timeout=5.0) as http:
        for _ in range(uses):
            assert http.get("/data/export", headers={"X-API-Key": str(created["key"])}).status_code == 200

    # uvicorn shuts down gracefully, then re-raises the signal it caught, so the exit status is "killed by SIGTERM".
    assert server.stop() in (0, -signal.SIGTERM), server.log
    assert "Traceback" not in server.log

    with sqlite3.connect(database) as connection:
        use_count, last_used_at = connection.execute(
            "SELECT use_count, last_used_at FROM api_keys WHERE id = ?", (created["id"],)
        ).fetchone()
    assert use_count == uses
    assert last_used_at is not None
