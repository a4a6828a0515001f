"""Verification on the hot path: garbage is refused before any I/O; a use is counted and becomes visible."""

from __future__ import annotations

from typing import Any

import pytest

from keystile.clock import FakeClock
from keystile.keys import format as key_format
from tests.helpers import (
    INVALID_KEY,
    KeystileClient,
    create_key,
    parse_time,
    recorded_statements,
    stored_key,
    user_headers,
    with_checksum,
    wrong_checksum,
)

pytestmark = pytest.mark.no_timer_flush


# Malformed keys cost no I/O


@pytest.mark.parametrize(
    "make_malformed",
    [
        pytest.param(wrong_checksum, id="bad-checksum"),
        pytest.param(lambda key: "kx" + key[2:], id="wrong-prefix"),
        pytest.param(lambda key: with_checksum("ks_live_" + key[3:-6]), id="other-prefix-with-valid-checksum"),
        pytest.param(lambda key: key + "A" * 600, id="too-long"),
        pytest.param(lambda key: key[:-1], id="truncated"),
        pytest.param(lambda key: key[:5] + key[6:] + "A", id="character-moved"),
        pytest.param(lambda key: key.replace("_", "\x00", 1), id="nul-byte"),
    ],
)
async def test_malformed_key_is_rejected_without_any_sql(client: KeystileClient, make_malformed: Any) -> None:
    headers = await user_headers(client)
    created = await create_key(client, headers)
    malformed = make_malformed(created["key"])
    assert key_format.key_id_of(malformed, "ks") is None

    with recorded_statements(client.keystile) as statements:
        response = await client.get("/data/export", headers={"X-API-Key": malformed.encode()})

    assert response.status_code == 401
    assert response.json() == INVALID_KEY
    assert response.headers["WWW-Authenticate"] == "APIKey"
    assert statements == []
    assert len(client.keystile.usage) == 0


async def test_well_formed_unknown_key_is_looked_up_in_the_database(client: KeystileClient) -> None:
    headers = await user_headers(client)
    await create_key(client, headers)
    unknown = key_format.generate_key("ks")

    with recorded_statements(client.keystile) as statements:
        response = await client.get("/data/export", headers={"X-API-Key": unknown.raw})

    assert response.status_code == 401
    assert response.json() == INVALID_KEY
    assert len(statements) == 1
    assert "api_keys" in statements[0]
    assert len(client.keystile.usage) == 0


async def test_known_key_id_with_a_wrong_secret_is_looked_up_and_refused(client: KeystileClient) -> None:
    headers = await user_headers(client)
    created = await create_key(client, headers)
    prefix, key_id, _ = created["key"].rsplit("_", 2)
    other_secret = key_format.generate_key("ks").raw.rsplit("_", 2)[2][:43]
    forged = with_checksum(f"{prefix}_{key_id}_{other_secret}")
    assert key_format.key_id_of(forged, "ks") is not None

    with recorded_statements(client.keystile) as statements:
        response = await client.get("/data/export", headers={"X-API-Key": forged})

    assert response.status_code == 401
    assert response.json() == INVALID_KEY
    assert len(statements) == 1
    await client.keystile.usage.flush()
    row = await stored_key(client, created["id"])
    assert row.use_count == 0
    assert row.last_used_at is None


# Usage: last_used_at and use_count


async def test_use_is_visible_on_read_at_once_and_stored_after_a_flush(
    client: KeystileClient, clock: FakeClock
) -> None:
    headers = await user_headers(client)
    created = await create_key(client, headers)
    key = {"X-API-Key": created["key"]}
    assert (await client.get("/data/export", headers=key)).status_code == 200
    clock.advance(30)
    assert (await client.get("/data/export", headers=key)).status_code == 200
    clock.advance(30)
    last_use = clock.now
    assert (await client.get("/data/export", headers=key)).status_code == 200
    clock.advance(30)

    before_flush = (await client.get(f"/keys/{created['id']}", headers=headers)).json()
    written = await client.keystile.usage.flush()
    after_flush = (await client.get(f"/keys/{created['id']}", headers=headers)).json()

    assert before_flush["use_count"] == 3
    assert parse_time(before_flush["last_used_at"]) == last_use
    assert written == 1
    row = await stored_key(client, created["id"])
    assert row.use_count == 3
    assert row.last_used_at == last_use
    assert after_flush["use_count"] == 3, "a flushed use must not be counted twice"
    assert parse_time(after_flush["last_used_at"]) == last_use


async def test_uses_after_a_flush_add_to_the_stored_count(client: KeystileClient, clock: FakeClock) -> None:
    headers = await user_headers(client)
    created = await create_key(client, headers)
    key = {"X-API-Key": created["key"]}
    assert (await client.get("/data/export", headers=key)).status_code == 200
    await client.keystile.usage.flush()
    clock.advance(60)

    assert (await client.get("/data/export", headers=key)).status_code == 200
    read = (await client.get(f"/keys/{created['id']}", headers=headers)).json()
    await client.keystile.usage.flush()

    assert read["use_count"] == 2
    assert parse_time(read["last_used_at"]) == clock.now
    row = await stored_key(client, created["id"])
    assert row.use_count == 2
    assert row.last_used_at == clock.now


async def test_use_shows_in_the_list_too(client: KeystileClient, clock: FakeClock) -> None:
    headers = await user_headers(client)
    used = await create_key(client, headers, name="used")
    unused = await create_key(client, headers, name="unused")

    assert (await client.get("/data/export", headers={"X-API-Key": used["key"]})).status_code == 200
    listed = {item["id"]: item for item in (await client.get("/keys/", headers=headers)).json()}

    assert listed[used["id"]]["use_count"] == 1
    assert parse_time(listed[used["id"]]["last_used_at"]) == clock.now
    assert listed[unused["id"]]["use_count"] == 0
    assert listed[unused["id"]]["last_used_at"] is None


@pytest.mark.parametrize(
    "make_refused",
    [
        pytest.param(wrong_checksum, id="bad-checksum"),
        pytest.param(lambda key: key + "\x00", id="nul-byte"),
    ],
)
async def test_refused_attempts_are_not_counted_as_uses(client: KeystileClient, make_refused: Any) -> None:
    headers = await user_headers(client)
    created = await create_key(client, headers)

    for _ in range(3):
        response = await client.get("/data/export", headers={"X-API-Key": make_refused(created["key"]).encode()})
        assert response.status_code == 401
    read = (await client.get(f"/keys/{created['id']}", headers=headers)).json()
    await client.keystile.usage.flush()

    assert read["use_count"] == 0
    assert read["last_used_at"] is None
    row = await stored_key(client, created["id"])
    assert row.use_count == 0
    assert row.last_used_at is None


async def test_use_of_a_revoked_key_is_not_counted(client: KeystileClient) -> None:
    headers = await user_headers(client)
    created = await create_key(client, headers)
    assert (await client.post(f"/keys/{created['id']}/revoke", headers=headers)).status_code == 200

    response = await client.get("/data/export", headers={"X-API-Key": created["key"]})
    await client.keystile.usage.flush()

    assert response.status_code == 401
    assert response.json() == INVALID_KEY
    row = await stored_key(client, created["id"])
    assert row.use_count == 0
    assert row.last_used_at is None
    assert row.is_active is False
