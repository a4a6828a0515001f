"""Usage (use_count, last_used_at) is counted in memory and written in batches: no write per request, nothing lost."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import event, select
from sqlalchemy.ext.asyncio import AsyncEngine

from keystile.app import create_app
from keystile.clock import FakeClock
from keystile.db import create_engine
from keystile.keys.models import ApiKey
from tests.conftest import make_settings
from tests.helpers import CHEAP_PASSWORDS, KeystileClient, create_key, recorded_statements, user_headers

pytestmark = pytest.mark.no_timer_flush


def updates_of_api_keys(statements: list[str]) -> list[str]:
    return [statement for statement in statements if statement.lstrip().upper().startswith("UPDATE API_KEYS")]


async def stored_usage(engine: AsyncEngine, api_key_id: int) -> tuple[int, datetime | None]:
    async with engine.connect() as connection:
        row = (
            await connection.execute(select(ApiKey.use_count, ApiKey.last_used_at).where(ApiKey.id == api_key_id))
        ).one()
    return row.use_count, row.last_used_at


async def use(client: KeystileClient, key: str, times: int = 1) -> None:
    for _ in range(times):
        response = await client.get("/data/export", headers={"X-API-Key": key})
        assert response.status_code == 200, response.text


async def test_uses_are_buffered_without_an_update_per_request(client: KeystileClient) -> None:
    created = await create_key(client, await user_headers(client))

    with recorded_statements(client.keystile) as statements:
        await use(client, created["key"], times=20)

    assert updates_of_api_keys(statements) == []
    assert await stored_usage(client.keystile.engine, created["id"]) == (0, None)
    pending = client.keystile.usage.pending_for(created["id"])
    assert pending is not None
    assert pending.count == 20


async def test_flush_writes_one_update_per_key(client: KeystileClient, clock: FakeClock) -> None:
    headers = await user_headers(client)
    first = await create_key(client, headers, name="first")
    second = await create_key(client, headers, name="second")
    await use(client, first["key"], times=7)
    await use(client, second["key"], times=3)

    with recorded_statements(client.keystile) as statements:
        written = await client.keystile.usage.flush()

    assert written == 2
    assert len(updates_of_api_keys(statements)) == 2
    assert await stored_usage(client.keystile.engine, first["id"]) == (7, clock.now)
    assert await stored_usage(client.keystile.engine, second["id"]) == (3, clock.now)
    assert len(client.keystile.usage) == 0


async def test_last_used_at_is_the_newest_use(client: KeystileClient, clock: FakeClock) -> None:
    created = await create_key(client, await user_headers(client))
    await use(client, created["key"])
    clock.advance(60)
    await use(client, created["key"])
    newest = clock.now
    client.keystile.usage.record(created["id"], newest - timedelta(seconds=30))  # a late, older record

    await client.keystile.usage.flush()

    assert await stored_usage(client.keystile.engine, created["id"]) == (3, newest)


async def test_flush_keeps_a_newer_last_used_at_already_stored(client: KeystileClient, clock: FakeClock) -> None:
    created = await create_key(client, await user_headers(client))
    later = clock.now + timedelta(hours=1)  # as if another process wrote a later use first
    client.keystile.usage.record(created["id"], later)
    await client.keystile.usage.flush()

    await use(client, created["key"])
    await client.keystile.usage.flush()

    assert await stored_usage(client.keystile.engine, created["id"]) == (2, later)


async def test_key_used_once_is_recorded(client: KeystileClient, clock: FakeClock) -> None:
    headers = await user_headers(client)
    created = await create_key(client, headers)
    await use(client, created["key"])

    assert await client.keystile.usage.flush() == 1

    assert await stored_usage(client.keystile.engine, created["id"]) == (1, clock.now)
    shown = await client.get(f"/keys/{created['id']}", headers=headers)
    assert shown.json()["use_count"] == 1
    assert shown.json()["last_used_at"] is not None


class DatabaseDown(OSError):
    pass


@contextlib.contextmanager
def refusing_writes(engine: AsyncEngine, error: Exception) -> Iterator[None]:
    """Inside, every UPDATE fails with `error` before it reaches the database."""

    def refuse_writes(*args: Any) -> None:
        if args[2].lstrip().upper().startswith("UPDATE"):
            raise error

    event.listen(engine.sync_engine, "before_cursor_execute", refuse_writes)
    try:
        yield
    finally:
        event.remove(engine.sync_engine, "before_cursor_execute", refuse_writes)


async def test_failed_flush_keeps_its_counts_for_the_next_flush(client: KeystileClient, clock: FakeClock) -> None:
    created = await create_key(client, await user_headers(client))
    await use(client, created["key"], times=4)

    with refusing_writes(client.keystile.engine, DatabaseDown("database went away")), pytest.raises(DatabaseDown):
        await client.keystile.usage.flush()
    assert await stored_usage(client.keystile.engine, created["id"]) == (0, None)
    await use(client, created["key"], times=2)  # uses between the failed and the good flush add up

    assert await client.keystile.usage.flush() == 1

    assert await stored_usage(client.keystile.engine, created["id"]) == (6, clock.now)
    assert len(client.keystile.usage) == 0


async def test_flushes_failing_for_want_of_the_database_log_one_error_per_outage_without_a_traceback(
    client: KeystileClient, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    created = await create_key(client, await user_headers(client))
    outages = 2
    for _ in range(outages):
        await use(client, created["key"], times=2)
        with refusing_writes(client.keystile.engine, DatabaseDown("connection refused")):
            for _ in range(3):  # the timer would retry every 5 s
                with pytest.raises(DatabaseDown):
                    await client.keystile.usage.flush()
        assert await client.keystile.usage.flush() == 1  # the database is back: everything kept is written

    errors = [record for record in caplog.records if record.levelno >= logging.ERROR]
    assert len(errors) == outages
    assert all(record.exc_info is None for record in errors)
    assert all(record.getMessage().startswith("database unavailable") for record in errors)
    assert await stored_usage(client.keystile.engine, created["id"]) == (2 * outages, clock.now)


async def test_a_flush_failing_for_another_reason_is_logged_with_its_traceback_every_time(
    client: KeystileClient, caplog: pytest.LogCaptureFixture
) -> None:
    created = await create_key(client, await user_headers(client))
    await use(client, created["key"])

    with refusing_writes(client.keystile.engine, ValueError("a bug")):
        for _ in range(2):
            with pytest.raises(ValueError, match="a bug"):
                await client.keystile.usage.flush()

    errors = [record for record in caplog.records if record.levelno >= logging.ERROR]
    assert [record.getMessage() for record in errors] == ["usage flush failed; 1 keys kept for the next flush"] * 2
    assert all(record.exc_info is not None for record in errors)
    assert await client.keystile.usage.flush() == 1


async def test_app_shutdown_flushes_every_recorded_use(database_url: str, clock: FakeClock) -> None:
    app = create_app(make_settings(database_url), clock=clock, passwords=CHEAP_PASSWORDS)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with KeystileClient(transport=transport, base_url="http://testserver") as client:
            headers = await user_headers(client)
            keys = [await create_key(client, headers, name=f"k{index}") for index in range(3)]
            for index, created in enumerate(keys):
                await use(client, created["key"], times=index + 1)
            assert len(app.state.keystile.usage) == 3

    engine = create_engine(database_url)
    try:
        for index, created in enumerate(keys):
            assert await stored_usage(engine, created["id"]) == (index + 1, clock.now)
    finally:
        await engine.dispose()


@pytest.mark.parametrize("usage_flush_seconds", [0.01])
async def test_timer_flushes_without_a_shutdown(make_client: Any, clock: FakeClock) -> None:
    client: KeystileClient = await make_client()
    created = await create_key(client, await user_headers(client))
    await use(client, created["key"], times=3)

    loop = asyncio.get_running_loop()
    deadline = loop.time() + 5.0
    while await stored_usage(client.keystile.engine, created["id"]) != (3, clock.now):
        assert loop.time() < deadline, "the usage timer did not flush within 5 s"
        await asyncio.sleep(0.01)
