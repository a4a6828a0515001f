"""A key's life after issue (issue 3): update, expiry, rotation with grace, and revocation for good."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from keystile.clock import FakeClock
from keystile.ratelimit.policy import RateLimitPolicy
from tests.helpers import (
    INVALID_KEY,
    UNROTATABLE,
    KeystileClient,
    admin_headers,
    create_key,
    database_snapshot,
    key_count,
    make_unrotatable,
    parse_time,
    row_values,
    stored_key,
    user_headers,
    verify,
)

SETTINGS = {
    "scopes": ["data:read", "keys:verify"],
    "rate_limit": {"limit": 10, "window_seconds": 60},
    "ip_allowlist": ["127.0.0.1", "10.0.0.0/8"],
    "metadata": {"team": "payments", "tier": 2},
}


async def export(client: KeystileClient, raw: str) -> int:
    return (await client.get("/data/export", headers={"X-API-Key": raw})).status_code


# PATCH /keys/{id}


@pytest.mark.parametrize(
    ("change", "response_fields", "row_fields"),
    [
        pytest.param({"name": "renamed"}, {"name": "renamed"}, {"name": "renamed"}, id="name"),
        pytest.param(
            {"scopes": ["data:write", "admin.read"]},
            {"scopes": ["data:write", "admin.read"]},
            {"scopes": ["data:write", "admin.read"]},
            id="scopes",
        ),
        pytest.param({"scopes": []}, {"scopes": []}, {"scopes": []}, id="scopes-emptied"),
        pytest.param(
            {"rate_limit": {"limit": 5, "window_seconds": 10}},
            {"rate_limit": {"limit": 5, "window_seconds": 10}},
            {"rate_limit_requests": 5, "rate_limit_window_seconds": 10},
            id="rate-limit",
        ),
        pytest.param({"quota": 7}, {"quota_remaining": 7}, {"quota_remaining": 7}, id="quota"),
        pytest.param({"quota": 0}, {"quota_remaining": 0}, {"quota_remaining": 0}, id="quota-zero"),
        pytest.param(
            {"ip_allowlist": ["192.168.0.0/16", "2001:db8::1"]},
            {"ip_allowlist": ["192.168.0.0/16", "2001:db8::1/128"]},
            {"ip_allowlist": ["192.168.0.0/16", "2001:db8::1/128"]},
            id="ip-allowlist",
        ),
        pytest.param(
            {"metadata": {"owner": "ops", "nested": {"a": [1, 2]}}},
            {"metadata": {"owner": "ops", "nested": {"a": [1, 2]}}},
            {"key_metadata": {"owner": "ops", "nested": {"a": [1, 2]}}},
            id="metadata",
        ),
        pytest.param({"metadata": {}}, {"metadata": {}}, {"key_metadata": {}}, id="metadata-emptied"),
    ],
)
async def test_patch_changes_only_the_given_field(
    client: KeystileClient,
    change: dict[str, Any],
    response_fields: dict[str, Any],
    row_fields: dict[str, Any],
) -> None:
    headers = await user_headers(client)
    created = await create_key(client, headers, name="original", **SETTINGS)
    before = row_values(await stored_key(client, created["id"]))

    response = await client.patch(f"/keys/{created['id']}", json=change, headers=headers)

    assert response.status_code == 200, response.text
    body = response.json()
    assert {name: body[name] for name in response_fields} == response_fields
    assert "key" not in body
    assert row_values(await stored_key(client, created["id"])) == before | row_fields


async def test_patch_expires_in_sets_the_expiry_from_now(client: KeystileClient, clock: FakeClock) -> None:
    headers = await user_headers(client)
    created = await create_key(client, headers)
    clock.advance(30)

    response = await client.patch(f"/keys/{created['id']}", json={"expires_in": 600}, headers=headers)

    assert response.status_code == 200, response.text
    assert parse_time(response.json()["expires_at"]) == clock.now + timedelta(seconds=600)
    assert (await stored_key(client, created["id"])).expires_at == clock.now + timedelta(seconds=600)


async def test_patch_expires_at_sets_that_instant(client: KeystileClient, clock: FakeClock) -> None:
    headers = await user_headers(client)
    created = await create_key(client, headers, expires_in=60)
    expires_at = clock.now + timedelta(days=3)

    response = await client.patch(
        f"/keys/{created['id']}", json={"expires_at": expires_at.isoformat()}, headers=headers
    )

    assert response.status_code == 200, response.text
    assert parse_time(response.json()["expires_at"]) == expires_at
    assert (await stored_key(client, created["id"])).expires_at == expires_at


@pytest.mark.parametrize(
    ("field", "response_field", "row_fields"),
    [
        pytest.param("expires_at", "expires_at", {"expires_at": None}, id="expires-at"),
        pytest.param(
            "rate_limit",
            "rate_limit",
            {"rate_limit_requests": None, "rate_limit_window_seconds": None},
            id="rate-limit",
        ),
        pytest.param("quota", "quota_remaining", {"quota_remaining": None}, id="quota"),
    ],
)
async def test_patch_null_clears_the_field(
    client: KeystileClient, field: str, response_field: str, row_fields: dict[str, Any]
) -> None:
    headers = await user_headers(client)
    created = await create_key(
        client, headers, expires_in=600, rate_limit={"limit": 3, "window_seconds": 60}, quota=100
    )
    before = row_values(await stored_key(client, created["id"]))
    assert all(before[name] is not None for name in row_fields)

    response = await client.patch(f"/keys/{created['id']}", json={field: None}, headers=headers)

    assert response.status_code == 200, response.text
    assert response.json()[response_field] is None
    assert row_values(await stored_key(client, created["id"])) == before | row_fields


async def test_cleared_expiry_lets_the_key_outlive_its_old_expiry(client: KeystileClient, clock: FakeClock) -> None:
    headers = await user_headers(client)
    created = await create_key(client, headers, expires_in=60)
    assert (await client.patch(f"/keys/{created['id']}", json={"expires_at": None}, headers=headers)).status_code == 200

    clock.advance(120)

    assert await export(client, created["key"]) == 200


async def test_patch_of_several_fields_at_once_applies_them_all(client: KeystileClient) -> None:
    headers = await user_headers(client)
    created = await create_key(client, headers)
    change = {"name": "both", "scopes": ["read"], "quota": 5, "metadata": {"k": "v"}}

    response = await client.patch(f"/keys/{created['id']}", json=change, headers=headers)

    assert response.status_code == 200, response.text
    row = await stored_key(client, created["id"])
    assert (row.name, row.scopes, row.quota_remaining, row.key_metadata) == ("both", ["read"], 5, {"k": "v"})


async def test_empty_patch_changes_nothing(client: KeystileClient) -> None:
    headers = await user_headers(client)
    created = await create_key(client, headers, **SETTINGS)
    before = row_values(await stored_key(client, created["id"]))

    response = await client.patch(f"/keys/{created['id']}", json={}, headers=headers)

    assert response.status_code == 200, response.text
    assert row_values(await stored_key(client, created["id"])) == before


# Expiry


@pytest.mark.parametrize(
    "expiry",
    [
        pytest.param(lambda now: {"expires_in": 600}, id="expires-in"),
        pytest.param(lambda now: {"expires_at": (now + timedelta(seconds=600)).isoformat()}, id="expires-at"),
    ],
)
async def test_key_works_until_its_expiry_then_is_refused_with_401(
    client: KeystileClient, clock: FakeClock, expiry: Any
) -> None:
    headers = await user_headers(client)
    created = await create_key(client, headers, **expiry(clock.now))
    assert (await stored_key(client, created["id"])).expires_at == clock.now + timedelta(seconds=600)
    clock.advance(599)
    assert await export(client, created["key"]) == 200

    clock.advance(1)
    refused = await client.get("/data/export", headers={"X-API-Key": created["key"]})

    assert refused.status_code == 401
    assert refused.json() == INVALID_KEY
    assert refused.headers["WWW-Authenticate"] == "APIKey"
    row = await stored_key(client, created["id"])
    assert row.is_active is True
    assert row.revoked_at is None


async def test_expiry_set_by_patch_stops_a_cached_key(client: KeystileClient, clock: FakeClock) -> None:
    headers = await user_headers(client)
    created = await create_key(client, headers)
    assert await export(client, created["key"]) == 200
    assert (await client.patch(f"/keys/{created['id']}", json={"expires_in": 10}, headers=headers)).status_code == 200
    assert await export(client, created["key"]) == 200

    clock.advance(10)

    assert await export(client, created["key"]) == 401


async def test_expired_key_is_expired_for_verify_too(client: KeystileClient, clock: FakeClock) -> None:
    admin = await admin_headers(client)
    created = await create_key(client, await user_headers(client), expires_in=5)
    clock.advance(5)

    body = await verify(client, admin, created["key"])

    assert (body["valid"], body["code"], body["api_key_id"]) == (False, "EXPIRED", created["id"])


# POST /keys/{id}/rotate


async def test_rotate_issues_a_new_key_with_the_old_settings(client: KeystileClient, clock: FakeClock) -> None:
    headers = await user_headers(client)
    old = await create_key(client, headers, name="ci", expires_in=86_400, **SETTINGS)

    response = await client.post(f"/keys/{old['id']}/rotate", json={"grace_seconds": 300}, headers=headers)

    assert response.status_code == 201, response.text
    assert response.headers["Cache-Control"] == "no-store"
    new = response.json()
    assert new["id"] != old["id"]
    assert new["key"] != old["key"]
    assert new["hint"] != old["hint"]
    assert new["rotated_from"] == old["id"]
    assert new["is_active"] is True
    for field in ("name", "scopes", "rate_limit", "ip_allowlist", "metadata", "expires_at"):
        assert new[field] == old[field], field
    assert parse_time(new["created_at"]) == clock.now

    old_row = await stored_key(client, old["id"])
    new_row = await stored_key(client, new["id"])
    assert new_row.rotated_from == old["id"]
    assert new_row.user_id == old_row.user_id
    assert (new_row.scopes, new_row.ip_allowlist, new_row.key_metadata) == (
        old_row.scopes,
        old_row.ip_allowlist,
        old_row.key_metadata,
    )
    assert new_row.rate_limit == RateLimitPolicy(limit=10, window_seconds=60)
    assert new_row.expires_at == clock.now + timedelta(seconds=86_400)
    assert old_row.expires_at == clock.now + timedelta(seconds=300)
    assert old_row.is_active is True
    assert old_row.key_hash != new_row.key_hash
    assert await export(client, new["key"]) == 200


async def test_rotation_moves_the_remaining_quota_to_the_new_key(client: KeystileClient) -> None:
    headers = await user_headers(client)
    old = await create_key(client, headers, quota=50)

    response = await client.post(f"/keys/{old['id']}/rotate", json={"grace_seconds": 60}, headers=headers)

    assert response.status_code == 201, response.text
    assert response.json()["quota_remaining"] == 50
    old_row = await stored_key(client, old["id"])
    new_row = await stored_key(client, response.json()["id"])
    assert new_row.quota_remaining == 50
    assert old_row.quota_remaining is None
    assert old_row.quota_holder_id == new_row.id


async def test_old_key_works_inside_the_grace_and_fails_after_it(client: KeystileClient, clock: FakeClock) -> None:
    admin = await admin_headers(client)
    headers = await user_headers(client)
    old = await create_key(client, headers)
    rotated = await client.post(f"/keys/{old['id']}/rotate", json={"grace_seconds": 300}, headers=headers)
    assert rotated.status_code == 201, rotated.text
    new = rotated.json()

    clock.advance(299)
    assert await export(client, old["key"]) == 200
    assert (await verify(client, admin, old["key"]))["code"] == "VALID"

    clock.advance(1)
    refused = await client.get("/data/export", headers={"X-API-Key": old["key"]})
    verdict = await verify(client, admin, old["key"])

    assert refused.status_code == 401
    assert refused.json() == INVALID_KEY
    assert (verdict["valid"], verdict["code"], verdict["api_key_id"]) == (False, "EXPIRED", old["id"])
    assert await export(client, new["key"]) == 200
    assert (await stored_key(client, old["id"])).expires_at == clock.now


@pytest.mark.parametrize(
    "body",
    [
        pytest.param({"grace_seconds": 0}, id="grace-0"),
        pytest.param({}, id="empty-body"),
        pytest.param(None, id="no-body"),
    ],
)
async def test_rotation_without_grace_stops_the_old_key_at_once(
    client: KeystileClient, clock: FakeClock, body: dict[str, Any] | None
) -> None:
    headers = await user_headers(client)
    old = await create_key(client, headers)
    assert await export(client, old["key"]) == 200

    response = await client.post(f"/keys/{old['id']}/rotate", json=body, headers=headers)

    assert response.status_code == 201, response.text
    assert await export(client, old["key"]) == 401
    assert await export(client, response.json()["key"]) == 200
    assert (await stored_key(client, old["id"])).expires_at == clock.now


async def test_grace_never_extends_an_earlier_expiry(client: KeystileClient, clock: FakeClock) -> None:
    headers = await user_headers(client)
    old = await create_key(client, headers, expires_in=100)

    response = await client.post(f"/keys/{old['id']}/rotate", json={"grace_seconds": 1000}, headers=headers)

    assert response.status_code == 201, response.text
    assert (await stored_key(client, old["id"])).expires_at == clock.now + timedelta(seconds=100)
    assert parse_time(response.json()["expires_at"]) == clock.now + timedelta(seconds=100)
    clock.advance(100)
    assert await export(client, old["key"]) == 401


async def test_the_new_key_of_a_rotation_can_itself_be_rotated(client: KeystileClient) -> None:
    headers = await user_headers(client)
    first = await create_key(client, headers)
    second = (await client.post(f"/keys/{first['id']}/rotate", headers=headers)).json()

    response = await client.post(f"/keys/{second['id']}/rotate", headers=headers)

    assert response.status_code == 201, response.text
    assert response.json()["rotated_from"] == second["id"]
    assert await export(client, response.json()["key"]) == 200


async def test_first_key_still_in_grace_draws_from_the_quota_after_its_successor_is_rotated(
    client: KeystileClient,
) -> None:
    headers = await user_headers(client)
    first = await create_key(client, headers, quota=10)
    second = (await client.post(f"/keys/{first['id']}/rotate", json={"grace_seconds": 600}, headers=headers)).json()
    third = (await client.post(f"/keys/{second['id']}/rotate", json={"grace_seconds": 600}, headers=headers)).json()

    status = await export(client, first["key"])

    assert status == 200
    await client.keystile.quotas.release_all()
    assert (await stored_key(client, third["id"])).quota_remaining == 9


@pytest.mark.parametrize("how", UNROTATABLE)
async def test_rotating_a_revoked_expired_or_rotated_key_is_409_and_changes_nothing(
    client: KeystileClient, clock: FakeClock, how: str
) -> None:
    headers = await user_headers(client)
    key = await create_key(client, headers, expires_in=600, **SETTINGS)
    await make_unrotatable(client, clock, headers, key, how)
    before = await database_snapshot(client)

    response = await client.post(f"/keys/{key['id']}/rotate", json={"grace_seconds": 60}, headers=headers)

    assert response.status_code == 409, response.text
    assert isinstance(response.json()["detail"], str)
    assert "key" not in response.json()
    assert await database_snapshot(client) == before


# A revoked key is never active again


@pytest.mark.parametrize(
    "change",
    [
        pytest.param({"is_active": True}, id="is-active"),
        pytest.param({"is_active": True, "name": "revived"}, id="is-active-with-a-known-field"),
        pytest.param({"revoked_at": None}, id="revoked-at"),
    ],
)
async def test_patch_cannot_reactivate_a_revoked_key(client: KeystileClient, change: dict[str, Any]) -> None:
    headers = await user_headers(client)
    created = await create_key(client, headers)
    assert (await client.post(f"/keys/{created['id']}/revoke", headers=headers)).status_code == 200
    before = await database_snapshot(client)

    response = await client.patch(f"/keys/{created['id']}", json=change, headers=headers)

    assert response.status_code == 422, response.text
    assert await database_snapshot(client) == before
    assert await export(client, created["key"]) == 401


async def test_revoked_key_stays_revoked_after_a_patch_of_its_settings(
    client: KeystileClient, clock: FakeClock
) -> None:
    headers = await user_headers(client)
    created = await create_key(client, headers, expires_in=60)
    revoked = await client.post(f"/keys/{created['id']}/revoke", headers=headers)
    assert revoked.status_code == 200
    revoked_at = clock.now
    clock.advance(10)

    response = await client.patch(
        f"/keys/{created['id']}", json={"name": "renamed", "expires_at": None, "scopes": ["x"]}, headers=headers
    )

    assert response.status_code == 200, response.text
    assert response.json()["is_active"] is False
    row = await stored_key(client, created["id"])
    assert (row.is_active, row.revoked_at, row.name) == (False, revoked_at, "renamed")
    assert await export(client, created["key"]) == 401


async def test_rotating_or_revoking_again_never_revives_a_revoked_key(client: KeystileClient) -> None:
    headers = await user_headers(client)
    created = await create_key(client, headers)
    assert (await client.post(f"/keys/{created['id']}/revoke", headers=headers)).status_code == 200

    rotate = await client.post(f"/keys/{created['id']}/rotate", headers=headers)
    again = await client.post(f"/keys/{created['id']}/revoke", headers=headers)

    assert rotate.status_code == 409
    assert again.status_code == 200
    assert again.json()["is_active"] is False
    assert await key_count(client) == 1
    assert (await stored_key(client, created["id"])).is_active is False
    assert await export(client, created["key"]) == 401
