"""`/identities` (API.md section 8): owner-scoped CRUD, bad input refused with nothing stored, and keys naming them."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from keystile.identities.models import Identity
from tests.helpers import KeystileClient, create_key, user_headers

IDENTITY_FIELDS = {
    "id",
    "external_id",
    "metadata",
    "rate_limit",
    "quota_remaining",
    "quota_refill",
    "quota_refilled_at",
    "created_at",
}


async def create_identity(client: httpx.AsyncClient, headers: dict[str, str], **body: Any) -> dict[str, Any]:
    response = await client.post("/identities", json={"external_id": "acme", **body}, headers=headers)
    assert response.status_code == 201, response.text
    return dict(response.json())


async def identity_count(client: KeystileClient) -> int:
    async with client.keystile.session_factory() as session:
        return int(await session.scalar(select(func.count()).select_from(Identity)) or 0)


async def test_create_read_list_update_delete(client: KeystileClient) -> None:
    headers = await user_headers(client)
    created = await create_identity(
        client,
        headers,
        metadata={"plan": "pro"},
        rate_limit={"limit": 10, "window_seconds": 1},
        quota_refill={"amount": 10_000, "interval": "monthly"},
    )

    assert set(created) == IDENTITY_FIELDS
    assert (created["external_id"], created["metadata"], created["quota_remaining"]) == (
        "acme",
        {"plan": "pro"},
        10_000,
    )
    assert created["quota_refill"] == {"amount": 10_000, "interval": "monthly"}
    fetched = await client.get(f"/identities/{created['id']}", headers=headers)
    assert fetched.json() == created
    listed = await client.get("/identities", headers=headers)
    assert [i["id"] for i in listed.json()] == [created["id"]]

    patched = await client.patch(
        f"/identities/{created['id']}", json={"external_id": "acme-2", "quota": 5, "rate_limit": None}, headers=headers
    )
    assert patched.status_code == 200, patched.text
    assert (patched.json()["external_id"], patched.json()["quota_remaining"], patched.json()["rate_limit"]) == (
        "acme-2",
        5,
        None,
    )

    deleted = await client.delete(f"/identities/{created['id']}", headers=headers)
    assert deleted.status_code == 204
    assert (await client.get(f"/identities/{created['id']}", headers=headers)).status_code == 404
    assert await identity_count(client) == 0


async def test_another_users_identity_is_404_everywhere_including_on_a_key(client: KeystileClient) -> None:
    alice = await user_headers(client, "alice@example.com")
    bob = await user_headers(client, "bob@example.com")
    theirs = await create_identity(client, alice)
    bobs_key = await create_key(client, bob)

    answers = [
        await client.get(f"/identities/{theirs['id']}", headers=bob),
        await client.patch(f"/identities/{theirs['id']}", json={"quota": 1}, headers=bob),
        await client.delete(f"/identities/{theirs['id']}", headers=bob),
        await client.post("/keys/", json={"name": "k", "identity_id": theirs["id"]}, headers=bob),
        await client.patch(f"/keys/{bobs_key['id']}", json={"identity_id": theirs["id"]}, headers=bob),
    ]

    assert [a.status_code for a in answers] == [404] * 5
    assert answers[0].json() == {"detail": "Identity not found"}
    assert (await client.get("/identities", headers=bob)).json() == []
    assert (await client.get(f"/keys/{bobs_key['id']}", headers=bob)).json()["identity_id"] is None
    assert (await client.get(f"/identities/{theirs['id']}", headers=alice)).json()["quota_remaining"] is None


async def test_an_external_id_is_unique_per_owner_only(client: KeystileClient) -> None:
    alice = await user_headers(client, "alice@example.com")
    bob = await user_headers(client, "bob@example.com")
    await create_identity(client, alice, external_id="shared")
    other = await create_identity(client, alice, external_id="other")

    again = await client.post("/identities", json={"external_id": "shared"}, headers=alice)
    renamed = await client.patch(f"/identities/{other['id']}", json={"external_id": "shared"}, headers=alice)
    bobs = await client.post("/identities", json={"external_id": "shared"}, headers=bob)

    assert (again.status_code, renamed.status_code, bobs.status_code) == (409, 409, 201)
    assert (await client.get(f"/identities/{other['id']}", headers=alice)).json()["external_id"] == "other"
    assert await identity_count(client) == 3


async def test_concurrent_duplicates_make_one_identity(client: KeystileClient) -> None:
    import asyncio

    headers = await user_headers(client)
    answers = await asyncio.gather(
        *(client.post("/identities", json={"external_id": "race"}, headers=headers) for _ in range(5))
    )

    assert sorted(a.status_code for a in answers) == [201, 409, 409, 409, 409]
    assert await identity_count(client) == 1


@pytest.mark.parametrize(
    "body",
    [
        {"external_id": ""},
        {"external_id": "x" * 256},
        {"external_id": "a\x00b"},
        {"external_id": 5},
        {"external_id": "a", "quota_refill": {"amount": 0, "interval": "daily"}},
        {"external_id": "a", "quota_refill": {"amount": 5, "interval": "weekly"}},
        {"external_id": "a", "quota_refill": {"amount": [5], "interval": "daily"}},
        {"external_id": "a", "quota": -1},
        {"external_id": "a", "rate_limit": {"limit": 0, "window_seconds": 1}},
        {"external_id": "a", "unknown": 1},
        {"external_id": "a", "metadata": "not an object"},
    ],
)
async def test_bad_input_is_422_and_stores_nothing(client: KeystileClient, body: dict[str, Any]) -> None:
    headers = await user_headers(client)

    response = await client.post("/identities", json=body, headers=headers)

    assert response.status_code == 422, response.text
    assert await identity_count(client) == 0


async def test_a_key_gets_an_identity_on_create_and_patch_and_keeps_it_on_rotation(client: KeystileClient) -> None:
    headers = await user_headers(client)
    identity = await create_identity(client, headers)
    key = await create_key(client, headers, identity_id=identity["id"])
    other = await create_key(client, headers, name="other")

    moved = await client.patch(f"/keys/{other['id']}", json={"identity_id": identity["id"]}, headers=headers)
    rotated = await client.post(f"/keys/{key['id']}/rotate", json={}, headers=headers)
    left = await client.patch(f"/keys/{other['id']}", json={"identity_id": None}, headers=headers)

    assert key["identity_id"] == identity["id"]
    assert moved.json()["identity_id"] == identity["id"]
    assert rotated.json()["identity_id"] == identity["id"]
    assert left.json()["identity_id"] is None


async def test_an_identity_cannot_be_deleted_while_a_key_names_it(client: KeystileClient) -> None:
    headers = await user_headers(client)
    identity = await create_identity(client, headers)
    key = await create_key(client, headers, identity_id=identity["id"])

    refused = await client.delete(f"/identities/{identity['id']}", headers=headers)
    await client.patch(f"/keys/{key['id']}", json={"identity_id": None}, headers=headers)
    deleted = await client.delete(f"/identities/{identity['id']}", headers=headers)

    assert (refused.status_code, deleted.status_code) == (409, 204)
    assert await identity_count(client) == 0


async def test_identities_require_a_bearer_token(client: KeystileClient) -> None:
    assert (await client.get("/identities")).status_code == 401
    assert (await client.post("/identities", json={"external_id": "a"})).status_code == 401
