"""Admin routes (API.md section 3): every user's keys, listed and revoked by an admin; 403 for everyone else."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import select

from keystile.audit.models import AuditEvent
from keystile.clock import FakeClock
from tests.helpers import (
    INVALID_KEY,
    READ_FIELDS,
    KeystileClient,
    admin_headers,
    create_key,
    database_snapshot,
    login,
    make_admin,
    parse_time,
    register,
    stored_key,
    user_headers,
)

ADMIN_REQUIRED = {"detail": "Admin privileges required"}


async def three_keys(client: KeystileClient) -> dict[str, Any]:
    """Alice with two keys, Bob with one, and an admin with none; ids and headers for each."""
    alice = await register(client, "alice@example.com")
    bob = await register(client, "bob@example.com")
    alice_headers = await login(client, "alice@example.com")
    bob_headers = await login(client, "bob@example.com")
    return {
        "alice": alice["id"],
        "bob": bob["id"],
        "alice_headers": alice_headers,
        "bob_headers": bob_headers,
        "alice_first": await create_key(client, alice_headers, name="alice-1"),
        "bob_only": await create_key(client, bob_headers, name="bob-1"),
        "alice_second": await create_key(client, alice_headers, name="alice-2"),
        "admin_headers": await admin_headers(client),
    }


# GET /admin/keys


async def test_admin_lists_every_users_keys_newest_first_with_owner_id(client: KeystileClient) -> None:
    world = await three_keys(client)

    response = await client.get("/admin/keys", headers=world["admin_headers"])

    assert response.status_code == 200, response.text
    listed = response.json()
    assert [(item["id"], item["owner_id"], item["name"]) for item in listed] == [
        (world["alice_second"]["id"], world["alice"], "alice-2"),
        (world["bob_only"]["id"], world["bob"], "bob-1"),
        (world["alice_first"]["id"], world["alice"], "alice-1"),
    ]
    for item in listed:
        assert set(item) >= READ_FIELDS | {"owner_id"}
        assert "key" not in item
        assert "key_hash" not in item
        assert (await stored_key(client, item["id"])).user_id == item["owner_id"]


@pytest.mark.parametrize(
    ("owner", "names"),
    [
        pytest.param("alice", ["alice-2", "alice-1"], id="alice"),
        pytest.param("bob", ["bob-1"], id="bob"),
        pytest.param(None, [], id="user-without-keys"),
    ],
)
async def test_admin_filters_the_listing_by_owner_id(
    client: KeystileClient, owner: str | None, names: list[str]
) -> None:
    world = await three_keys(client)
    owner_id = world[owner] if owner is not None else world["bob"] + 100

    response = await client.get("/admin/keys", params={"owner_id": owner_id}, headers=world["admin_headers"])

    assert response.status_code == 200, response.text
    assert [item["name"] for item in response.json()] == names
    assert all(item["owner_id"] == owner_id for item in response.json())


@pytest.mark.parametrize(
    ("params", "names"),
    [
        pytest.param({"limit": 1}, ["alice-2"], id="limit-1"),
        pytest.param({"limit": 2, "offset": 1}, ["bob-1", "alice-1"], id="limit-2-offset-1"),
        pytest.param({"offset": 2}, ["alice-1"], id="offset-2"),
        pytest.param({"offset": 3}, [], id="offset-past-the-end"),
        pytest.param({"limit": 100}, ["alice-2", "bob-1", "alice-1"], id="limit-100"),
        pytest.param({"limit": 1, "offset": 1, "owner_id": "alice"}, ["alice-1"], id="paged-and-filtered"),
    ],
)
async def test_admin_listing_pages_with_limit_and_offset(
    client: KeystileClient, params: dict[str, Any], names: list[str]
) -> None:
    world = await three_keys(client)
    if "owner_id" in params:
        params = params | {"owner_id": world[params["owner_id"]]}

    response = await client.get("/admin/keys", params=params, headers=world["admin_headers"])

    assert response.status_code == 200, response.text
    assert [item["name"] for item in response.json()] == names


@pytest.mark.parametrize(
    "params",
    [
        pytest.param({"limit": 0}, id="limit-0"),
        pytest.param({"limit": 101}, id="limit-101"),
        pytest.param({"offset": -1}, id="negative-offset"),
        pytest.param({"owner_id": 0}, id="owner-id-0"),
        pytest.param({"owner_id": "alice"}, id="owner-id-text"),
        pytest.param({"owner_id": 2**31}, id="owner-id-too-big"),
    ],
)
async def test_admin_listing_refuses_bad_paging_with_422(client: KeystileClient, params: dict[str, Any]) -> None:
    admin = await admin_headers(client)

    response = await client.get("/admin/keys", params=params, headers=admin)

    assert response.status_code == 422, response.text


async def test_admin_listing_is_403_for_a_non_admin_and_401_without_a_token(client: KeystileClient) -> None:
    world = await three_keys(client)

    as_alice = await client.get("/admin/keys", headers=world["alice_headers"])
    anonymous = await client.get("/admin/keys")

    assert as_alice.status_code == 403
    assert as_alice.json() == ADMIN_REQUIRED
    assert anonymous.status_code == 401
    assert anonymous.json() == {"detail": "Not authenticated"}


async def test_an_api_key_is_no_admin_credential(client: KeystileClient) -> None:
    world = await three_keys(client)

    response = await client.get("/admin/keys", headers={"X-API-Key": world["alice_first"]["key"]})

    assert response.status_code == 401


# POST /admin/keys/{id}/revoke


async def test_admin_revokes_another_users_key(client: KeystileClient, clock: FakeClock) -> None:
    world = await three_keys(client)
    target = world["bob_only"]
    assert (await client.get("/data/export", headers={"X-API-Key": target["key"]})).status_code == 200
    clock.advance(5)

    response = await client.post(f"/admin/keys/{target['id']}/revoke", headers=world["admin_headers"])

    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["id"], body["owner_id"], body["is_active"]) == (target["id"], world["bob"], False)
    assert parse_time(body["revoked_at"]) == clock.now
    assert "key" not in body
    row = await stored_key(client, target["id"])
    assert (row.is_active, row.revoked_at) == (False, clock.now)
    refused = await client.get("/data/export", headers={"X-API-Key": target["key"]})
    assert refused.status_code == 401
    assert refused.json() == INVALID_KEY
    for other in (world["alice_first"], world["alice_second"]):
        assert (await stored_key(client, other["id"])).is_active is True
    owner_view = await client.get(f"/keys/{target['id']}", headers=world["bob_headers"])
    assert owner_view.json()["is_active"] is False


async def test_admin_revoke_is_idempotent_and_audited_once(client: KeystileClient, clock: FakeClock) -> None:
    world = await three_keys(client)
    target = world["alice_first"]
    first = await client.post(f"/admin/keys/{target['id']}/revoke", headers=world["admin_headers"])
    revoked_at = clock.now
    clock.advance(30)

    again = await client.post(f"/admin/keys/{target['id']}/revoke", headers=world["admin_headers"])

    assert first.status_code == again.status_code == 200
    assert again.json() == first.json()
    assert (await stored_key(client, target["id"])).revoked_at == revoked_at
    async with client.keystile.session_factory() as session:
        events = (
            await session.scalars(
                select(AuditEvent).where(AuditEvent.api_key_id == target["id"], AuditEvent.action == "key.revoked")
            )
        ).all()
    assert len(events) == 1
    assert events[0].actor_id != world["alice"]
    assert events[0].at == revoked_at


@pytest.mark.parametrize(
    "caller",
    [
        pytest.param("alice_headers", id="the-owner"),
        pytest.param("bob_headers", id="another-user"),
    ],
)
async def test_admin_revoke_is_403_for_non_admins_and_changes_nothing(client: KeystileClient, caller: str) -> None:
    world = await three_keys(client)
    target = world["alice_first"]
    before = await database_snapshot(client)

    response = await client.post(f"/admin/keys/{target['id']}/revoke", headers=world[caller])

    assert response.status_code == 403
    assert response.json() == ADMIN_REQUIRED
    assert await database_snapshot(client) == before
    assert (await client.get("/data/export", headers={"X-API-Key": target["key"]})).status_code == 200


async def test_admin_revoke_of_a_nonexistent_key_is_404(client: KeystileClient) -> None:
    admin = await admin_headers(client)
    before = await database_snapshot(client)

    response = await client.post("/admin/keys/424242/revoke", headers=admin)

    assert response.status_code == 404
    assert response.json() == {"detail": "API key not found"}
    assert await database_snapshot(client) == before


async def test_admin_rights_end_when_the_flag_is_cleared(client: KeystileClient) -> None:
    admin = await admin_headers(client)
    assert (await client.get("/admin/keys", headers=admin)).status_code == 200
    await make_admin(client, "admin@example.com", is_admin=False)

    response = await client.get("/admin/keys", headers=admin)

    assert response.status_code == 403
    assert response.json() == ADMIN_REQUIRED


async def test_new_users_are_not_admins(client: KeystileClient) -> None:
    headers = await user_headers(client)

    me = await client.get("/users/me", headers=headers)

    assert me.json()["is_admin"] is False
    assert (await client.get("/admin/keys", headers=headers)).status_code == 403
