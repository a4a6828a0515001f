"""Every `/keys/{id}` route and method, as another user and for an id that does not exist: 404 and nothing changes."""

from __future__ import annotations

from typing import Any

import pytest

from keystile.clock import FakeClock
from tests.helpers import (
    KeystileClient,
    admin_headers,
    create_key,
    database_snapshot,
    row_values,
    stored_key,
    user_headers,
)

NOT_FOUND = {"detail": "API key not found"}

ROUTES = [
    pytest.param("GET", "/keys/{pk}", None, id="get"),
    pytest.param("PATCH", "/keys/{pk}", {"name": "stolen"}, id="patch-name"),
    pytest.param("PATCH", "/keys/{pk}", {"scopes": ["admin"]}, id="patch-scopes"),
    pytest.param("PATCH", "/keys/{pk}", {"expires_at": None}, id="patch-clear-expiry"),
    pytest.param("PATCH", "/keys/{pk}", {"ip_allowlist": []}, id="patch-allowlist"),
    pytest.param("PATCH", "/keys/{pk}", {"quota": None, "rate_limit": None}, id="patch-limits"),
    pytest.param("PATCH", "/keys/{pk}", {"metadata": {"owner": "bob"}}, id="patch-metadata"),
    pytest.param("PATCH", "/keys/{pk}", {}, id="patch-empty"),
    pytest.param("POST", "/keys/{pk}/revoke", None, id="revoke"),
    pytest.param("POST", "/keys/{pk}/rotate", None, id="rotate-no-body"),
    pytest.param("POST", "/keys/{pk}/rotate", {"grace_seconds": 3600}, id="rotate-with-grace"),
]

ALICES_SETTINGS: dict[str, Any] = {
    "name": "alice-key",
    "scopes": ["data:read"],
    "expires_in": 3600,
    "rate_limit": {"limit": 10, "window_seconds": 60},
    "quota": 100,
    "ip_allowlist": ["127.0.0.1/32"],
    "metadata": {"owner": "alice"},
}


@pytest.mark.parametrize(("method", "path", "json"), ROUTES)
async def test_another_users_key_is_404_and_stays_exactly_as_it_was(
    client: KeystileClient, method: str, path: str, json: dict[str, Any] | None
) -> None:
    alice = await user_headers(client, "alice@example.com")
    bob = await user_headers(client, "bob@example.com")
    alices = await create_key(client, alice, **ALICES_SETTINGS)
    bobs = await create_key(client, bob, name="bob-key")
    row_before = row_values(await stored_key(client, alices["id"]))
    before = await database_snapshot(client)

    response = await client.request(method, path.format(pk=alices["id"]), json=json, headers=bob)

    assert response.status_code == 404, response.text
    assert response.json() == NOT_FOUND
    assert row_values(await stored_key(client, alices["id"])) == row_before
    assert await database_snapshot(client) == before
    assert (await client.get("/data/export", headers={"X-API-Key": alices["key"]})).status_code == 200
    assert (await client.get("/data/export", headers={"X-API-Key": bobs["key"]})).status_code == 200


@pytest.mark.parametrize(("method", "path", "json"), ROUTES)
async def test_another_users_revoked_or_rotated_key_is_still_404(
    client: KeystileClient, clock: FakeClock, method: str, path: str, json: dict[str, Any] | None
) -> None:
    alice = await user_headers(client, "alice@example.com")
    bob = await user_headers(client, "bob@example.com")
    revoked = await create_key(client, alice, name="revoked")
    assert (await client.post(f"/keys/{revoked['id']}/revoke", headers=alice)).status_code == 200
    rotated = await create_key(client, alice, name="rotated")
    rotation = await client.post(f"/keys/{rotated['id']}/rotate", json={"grace_seconds": 60}, headers=alice)
    assert rotation.status_code == 201
    before = await database_snapshot(client)

    responses = [
        await client.request(method, path.format(pk=pk), json=json, headers=bob)
        for pk in (revoked["id"], rotated["id"], rotation.json()["id"])
    ]

    assert [(response.status_code, response.json()) for response in responses] == [(404, NOT_FOUND)] * 3
    assert await database_snapshot(client) == before


@pytest.mark.parametrize(("method", "path", "json"), ROUTES)
async def test_nonexistent_key_id_is_404_and_changes_nothing(
    client: KeystileClient, method: str, path: str, json: dict[str, Any] | None
) -> None:
    alice = await user_headers(client, "alice@example.com")
    alices = await create_key(client, alice)
    before = await database_snapshot(client)

    responses = [
        await client.request(method, path.format(pk=pk), json=json, headers=alice)
        for pk in (alices["id"] + 1, alices["id"] + 1000, 2**31 - 1)
    ]

    assert [(response.status_code, response.json()) for response in responses] == [(404, NOT_FOUND)] * 3
    assert await database_snapshot(client) == before


@pytest.mark.parametrize(("method", "path", "json"), ROUTES)
async def test_the_owner_reaches_the_same_route(
    client: KeystileClient, method: str, path: str, json: dict[str, Any] | None
) -> None:
    alice = await user_headers(client, "alice@example.com")
    alices = await create_key(client, alice, **ALICES_SETTINGS)

    response = await client.request(method, path.format(pk=alices["id"]), json=json, headers=alice)

    assert response.status_code in (200, 201), response.text
    assert response.json()["owner_id"] == (await stored_key(client, alices["id"])).user_id


async def test_an_admin_reaches_another_users_key_only_through_the_admin_routes(client: KeystileClient) -> None:
    alice = await user_headers(client, "alice@example.com")
    admin = await admin_headers(client)
    alices = await create_key(client, alice)
    before = await database_snapshot(client)

    owner_route = await client.post(f"/keys/{alices['id']}/revoke", headers=admin)

    assert owner_route.status_code == 404
    assert owner_route.json() == NOT_FOUND
    assert await database_snapshot(client) == before
