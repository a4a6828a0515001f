"""The hot path's events (API.md section 9): key.rate_limited at most once per key and window, key.quota_low once per
refill period when 10% or less of the refill's amount remains, key.quota_exhausted once per period. Noted in memory
by the verifier and written by the usage flush (no I/O on the request), so nothing is in the outbox before a flush."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from sqlalchemy import select

from keystile.clock import FakeClock
from keystile.events.models import OutboxEvent
from tests.helpers import EXPORT, KeystileClient, create_key, key_header, login, user_headers

pytestmark = pytest.mark.no_timer_flush


async def alerts(client: KeystileClient) -> list[tuple[str, int | None]]:
    async with client.keystile.session_factory() as session:
        rows = await session.scalars(
            select(OutboxEvent).where(
                OutboxEvent.type.in_(["key.rate_limited", "key.quota_low", "key.quota_exhausted"])
            )
        )
        return sorted((row.type, row.api_key_id) for row in rows)


async def statuses(client: KeystileClient, key: dict[str, object], count: int) -> list[int]:
    return [(await client.get(EXPORT, headers=key_header(key))).status_code for _ in range(count)]


async def test_rate_limited_is_one_event_per_key_and_window_written_by_the_flush(
    client: KeystileClient, clock: FakeClock
) -> None:
    clock.now = datetime(2030, 1, 1, 12, 0, 0, tzinfo=UTC)
    key = await create_key(client, await user_headers(client), rate_limit={"limit": 1, "window_seconds": 60})

    assert await statuses(client, key, 4) == [200, 429, 429, 429]
    assert await alerts(client) == []  # nothing written by the requests themselves
    await client.keystile.usage.flush()
    clock.now = datetime(2030, 1, 1, 12, 1, 0, tzinfo=UTC)  # the next window
    assert await statuses(client, key, 3) == [200, 429, 429]
    await client.keystile.usage.flush()

    assert await alerts(client) == [("key.rate_limited", key["id"])] * 2
    async with client.keystile.session_factory() as session:
        query = select(OutboxEvent.body).where(OutboxEvent.type == "key.rate_limited")
        body = json.loads((await session.scalars(query)).first() or "{}")
    assert body["type"] == "key.rate_limited"
    assert body["data"]["id"] == key["id"]
    assert "key" not in body["data"]  # the key object, never the raw key


async def test_quota_low_and_exhausted_once_per_refill_period(client: KeystileClient, clock: FakeClock) -> None:
    clock.now = datetime(2030, 1, 1, 8, 0, 0, tzinfo=UTC)
    key = await create_key(client, await user_headers(client), quota_refill={"amount": 10, "interval": "daily"})

    assert await statuses(client, key, 12) == [200] * 10 + [429] * 2
    await client.keystile.usage.flush()
    first_day = await alerts(client)
    clock.now = datetime(2030, 1, 2, 8, 0, 0, tzinfo=UTC)
    assert await statuses(client, key, 11) == [200] * 10 + [429]
    await client.keystile.usage.flush()

    assert first_day == [("key.quota_exhausted", key["id"]), ("key.quota_low", key["id"])]
    assert await alerts(client) == [("key.quota_exhausted", key["id"])] * 2 + [("key.quota_low", key["id"])] * 2


async def test_a_quota_without_refill_is_only_ever_exhausted_once(client: KeystileClient, clock: FakeClock) -> None:
    key = await create_key(client, await user_headers(client), quota=3)

    assert await statuses(client, key, 5) == [200, 200, 200, 429, 429]
    await client.keystile.usage.flush()
    headers = await login(client)
    await client.patch(f"/keys/{key['id']}", json={"quota": 1}, headers=headers)
    assert await statuses(client, key, 2) == [200, 429]
    await client.keystile.usage.flush()

    assert await alerts(client) == [("key.quota_exhausted", key["id"])]  # once ever: no period to repeat in
