"""PostgreSQL stopped mid-run and started again: keys just seen keep verifying, the rest is a clean 503, nothing lost.

Each app here runs on a private PostgreSQL server (`tests.private_postgres`) that the tests stop with a fast
shutdown, as in a restart or failover; the shared server keeps serving every other test.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import asyncpg
import httpx
import pytest

from keystile import migrations
from keystile.clock import FakeClock
from keystile.db import is_database_unavailable
from keystile.keys.cache import DEFAULT_TTL_SECONDS
from keystile.settings import Settings
from tests import backends
from tests.conftest import MakeClient
from tests.helpers import (
    EXPORT,
    PASSWORD,
    FakeMonotonic,
    KeystileClient,
    create_key,
    key_header,
    stored_key,
    user_headers,
)
from tests.private_postgres import PostgresServer

pytestmark = [pytest.mark.postgres, pytest.mark.no_timer_flush]

DATABASE = "keystile_outage"
UNAVAILABLE = {"detail": "Database unavailable"}
STALE_IF_ERROR = Settings.model_fields["stale_if_error_seconds"].default


@pytest.fixture(scope="module")
def private_postgres() -> Iterator[PostgresServer]:
    server = PostgresServer.create()
    try:
        server.start()
        yield server
    finally:
        server.remove()


async def recreate_database(admin_url: str, name: str) -> None:
    connection = await asyncpg.connect(admin_url, timeout=5)
    try:
        await connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await connection.execute(f'CREATE DATABASE "{name}"')
    finally:
        await connection.close()


@pytest.fixture
def database_url(private_postgres: PostgresServer) -> str:
    """Overrides the suite's: every app of this module runs on the private server, on a freshly migrated database."""
    if not private_postgres.is_running():  # a failed test may have left it stopped
        private_postgres.start()
    backends.run(recreate_database(private_postgres.admin_url, DATABASE))
    url = private_postgres.url(DATABASE)
    migrations.upgrade(url)
    return url


@pytest.fixture
def monotonic() -> FakeMonotonic:
    """The apps' interval clock, so cache entries go stale (and too stale) when the test says."""
    return FakeMonotonic()


async def failed_flush(client: KeystileClient) -> BaseException:
    try:
        await client.keystile.usage.flush()
    except Exception as error:
        return error
    raise AssertionError("the usage flush succeeded while the database was down")


def records_at_least(caplog: pytest.LogCaptureFixture, level: int) -> list[logging.LogRecord]:
    return [record for record in caplog.records if record.levelno >= level]


def assert_unavailable(response: httpx.Response) -> None:
    assert response.status_code == 503, response.text
    assert response.json() == UNAVAILABLE
    assert response.headers["Retry-After"] == "5"


async def test_cached_keys_keep_verifying_through_an_outage_the_rest_is_503_and_service_resumes_by_itself(
    make_client: MakeClient,
    private_postgres: PostgresServer,
    monotonic: FakeMonotonic,
    clock: FakeClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    client = await make_client()
    headers = await user_headers(client)
    seen = await create_key(client, headers, name="seen")
    unseen = await create_key(client, headers, name="unseen")
    assert (await client.get(EXPORT, headers=key_header(seen))).status_code == 200
    caplog.clear()

    private_postgres.stop()
    fresh_hit = await client.get(EXPORT, headers=key_header(seen))
    monotonic.now += DEFAULT_TTL_SECONDS + 1  # past the refresh time: each use tries a reload, which fails
    stale_hits = [await client.get(EXPORT, headers=key_header(seen)) for _ in range(3)]
    needing_the_database = {
        "uncached key": await client.get(EXPORT, headers=key_header(unseen)),
        "verify endpoint": await client.post("/v1/keys/verify", json={"key": unseen["key"]}, headers=headers),
        "JWT route": await client.get("/users/me", headers=headers),
        "list keys": await client.get("/keys/", headers=headers),
        "issue a key": await client.post("/keys/", json={"name": "during"}, headers=headers),
        "login": await client.post("/auth/token", data={"username": "alice@example.com", "password": PASSWORD}),
    }
    ready_while_down = await client.get("/readyz")
    flush_errors = [await failed_flush(client) for _ in range(3)]
    pending_while_down = client.keystile.usage.pending_for(seen["id"])
    pending_count_while_down = pending_while_down.count if pending_while_down is not None else 0
    logged_while_down = list(caplog.records)
    monotonic.now += STALE_IF_ERROR  # now more than stale_if_error_seconds past the refresh time
    too_stale = await client.get(EXPORT, headers=key_header(seen))

    private_postgres.start()
    after = {
        "seen key": await client.get(EXPORT, headers=key_header(seen)),
        "uncached key": await client.get(EXPORT, headers=key_header(unseen)),
        "JWT route": await client.get("/users/me", headers=headers),
        "issue a key": await client.post("/keys/", json={"name": "after"}, headers=headers),
        "readyz": await client.get("/readyz"),
    }
    assert await client.keystile.usage.flush() == 2
    stored_seen = await stored_key(client, seen["id"])
    stored_unseen = await stored_key(client, unseen["id"])

    assert fresh_hit.status_code == 200
    assert [response.status_code for response in stale_hits] == [200] * 3
    for response in needing_the_database.values():
        assert_unavailable(response)
    assert_unavailable(too_stale)
    assert ready_while_down.status_code == 503
    assert ready_while_down.json() == {"status": "unavailable", "down": ["database"]}
    assert all(is_database_unavailable(error) for error in flush_errors)
    assert pending_count_while_down == 1 + 1 + 3  # before the outage, the fresh hit, the stale hits: in memory

    errors = [record for record in logged_while_down if record.levelno >= logging.ERROR]
    assert len(errors) == 1, [record.getMessage() for record in errors]
    assert errors[0].name == "keystile.db"
    assert errors[0].getMessage().startswith("database unavailable")
    assert errors[0].exc_info is None
    assert "Traceback" not in caplog.text

    assert {name: response.status_code for name, response in after.items()} == {
        "seen key": 200,
        "uncached key": 200,
        "JWT route": 200,
        "issue a key": 201,
        "readyz": 200,
    }
    assert after["readyz"].json() == {"status": "ok"}
    assert (stored_seen.use_count, stored_seen.last_used_at) == (1 + 1 + 3 + 1, clock.now)  # none lost, none twice
    assert stored_unseen.use_count == 1
    assert len(records_at_least(caplog, logging.ERROR)) == 1  # nothing more after the recovery
    recovered = [record for record in caplog.records if record.getMessage().startswith("database is back")]
    assert len(recovered) == 1
    assert recovered[0].levelno == logging.WARNING


async def test_a_key_whose_quota_lease_is_spent_gets_503_during_an_outage_and_one_with_a_lease_left_does_not(
    make_client: MakeClient, private_postgres: PostgresServer
) -> None:
    client = await make_client()
    headers = await user_headers(client)
    # A lease is the need plus a tenth of what remains: 1 for a quota of 5, 1 + 100 for a quota of 1000.
    spent = await create_key(client, headers, name="spent", quota=5)
    leased = await create_key(client, headers, name="leased", quota=1000)
    for created in (spent, leased):
        assert (await client.get(EXPORT, headers=key_header(created))).status_code == 200

    private_postgres.stop()
    spent_during = await client.get(EXPORT, headers=key_header(spent))
    leased_during = [await client.get(EXPORT, headers=key_header(leased)) for _ in range(3)]
    private_postgres.start()
    spent_after = await client.get(EXPORT, headers=key_header(spent))
    shown = await client.get(f"/keys/{spent['id']}", headers=headers)

    assert_unavailable(spent_during)  # nothing left to spend, and no way to lease more: not admitted
    assert [response.status_code for response in leased_during] == [200] * 3
    assert spent_after.status_code == 200
    assert shown.json()["quota_remaining"] == 5 - 2  # the refused request spent nothing


async def test_a_second_outage_is_a_second_incident(
    make_client: MakeClient, private_postgres: PostgresServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="keystile.db")
    client = await make_client()
    headers = await user_headers(client)
    outcomes: list[Any] = []

    for _ in range(2):
        private_postgres.stop()
        outcomes += [(await client.get("/users/me", headers=headers)).status_code for _ in range(3)]
        private_postgres.start()
        outcomes.append((await client.get("/users/me", headers=headers)).status_code)

    assert outcomes == [503, 503, 503, 200] * 2
    assert [record.levelno for record in caplog.records if record.name == "keystile.db"] == [
        logging.ERROR,
        logging.WARNING,
    ] * 2


async def test_stale_if_error_seconds_bounds_how_long_a_cached_key_outlives_its_refresh_time(
    make_client: MakeClient, private_postgres: PostgresServer, monotonic: FakeMonotonic
) -> None:
    client = await make_client(stale_if_error_seconds=30)
    created = await create_key(client, await user_headers(client))
    assert (await client.get(EXPORT, headers=key_header(created))).status_code == 200

    private_postgres.stop()
    monotonic.now += DEFAULT_TTL_SECONDS + 29
    within = await client.get(EXPORT, headers=key_header(created))
    monotonic.now += 1
    beyond = await client.get(EXPORT, headers=key_header(created))
    private_postgres.start()

    assert within.status_code == 200
    assert_unavailable(beyond)
