"""The audit log (API.md section 3, issue 3): one event per change, written with it; none for a failed change."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import select

from keystile.audit.models import AuditEvent
from keystile.clock import FakeClock
from tests.helpers import (
    UNROTATABLE,
    KeystileClient,
    admin_headers,
    create_key,
    database_snapshot,
    login,
    make_unrotatable,
    parse_time,
    register,
    user_headers,
)

EVENT_FIELDS = {"id", "at", "actor_id", "action", "api_key_id", "ip", "detail"}


async def stored_events(client: KeystileClient) -> list[AuditEvent]:
    async with client.keystile.session_factory() as session:
        return list((await session.scalars(select(AuditEvent).order_by(AuditEvent.id))).all())


async def events_of(client: KeystileClient, action: str) -> list[AuditEvent]:
    return [event for event in await stored_events(client) if event.action == action]


def only_new_event(before: list[AuditEvent], after: list[AuditEvent]) -> AuditEvent:
    known = {event.id for event in before}
    new = [event for event in after if event.id not in known]
    assert len(new) == 1, [(event.action, event.api_key_id) for event in new]
    return new[0]


async def owner_with_key(client: KeystileClient) -> tuple[int, dict[str, str], dict[str, Any]]:
    """A registered user's id, their Authorization header, and a key they issued."""
    user = await register(client)
    headers = await login(client)
    return user["id"], headers, await create_key(client, headers)


# Each action leaves exactly one event


async def test_registration_leaves_one_user_registered_event(client: KeystileClient, clock: FakeClock) -> None:
    user = await register(client)

    events = await stored_events(client)

    assert len(events) == 1
    event = events[0]
    assert (event.action, event.actor_id, event.api_key_id) == ("user.registered", user["id"], None)
    assert (event.ip, event.at, event.detail) == ("127.0.0.1", clock.now, {})


@pytest.mark.parametrize(
    ("email", "known"),
    [
        pytest.param("alice@example.com", True, id="existing-email"),
        pytest.param("ALICE@example.com", True, id="existing-email-other-case"),
        pytest.param("nobody@example.com", False, id="unknown-email"),
    ],
)
async def test_failed_login_leaves_one_event_naming_the_account_when_it_exists(
    client: KeystileClient, clock: FakeClock, email: str, known: bool
) -> None:
    user = await register(client)
    before = await stored_events(client)
    clock.advance(7)

    response = await client.post("/auth/token", data={"username": email, "password": "wrong password"})

    assert response.status_code == 401
    event = only_new_event(before, await stored_events(client))
    assert event.action == "user.login_failed"
    assert event.actor_id == (user["id"] if known else None)
    assert (event.api_key_id, event.ip, event.at) == (None, "127.0.0.1", clock.now)


async def test_successful_login_leaves_no_event(client: KeystileClient) -> None:
    await register(client)
    before = await database_snapshot(client)

    await login(client)

    assert await database_snapshot(client) == before


async def test_key_creation_leaves_one_key_created_event(client: KeystileClient, clock: FakeClock) -> None:
    user = await register(client)
    headers = await login(client)
    before = await stored_events(client)
    clock.advance(3)

    created = await create_key(client, headers)

    event = only_new_event(before, await stored_events(client))
    assert (event.action, event.actor_id, event.api_key_id) == ("key.created", user["id"], created["id"])
    assert (event.ip, event.at) == ("127.0.0.1", clock.now)


async def test_key_update_leaves_one_key_updated_event_naming_the_fields(
    client: KeystileClient, clock: FakeClock
) -> None:
    user_id, headers, created = await owner_with_key(client)
    before = await stored_events(client)
    clock.advance(3)

    response = await client.patch(
        f"/keys/{created['id']}", json={"name": "renamed", "quota": 5, "expires_at": None}, headers=headers
    )

    assert response.status_code == 200, response.text
    event = only_new_event(before, await stored_events(client))
    assert (event.action, event.actor_id, event.api_key_id) == ("key.updated", user_id, created["id"])
    assert (event.ip, event.at) == ("127.0.0.1", clock.now)
    assert event.detail == {"fields": ["expires_at", "name", "quota"]}


async def test_key_revocation_leaves_one_key_revoked_event_even_when_repeated(
    client: KeystileClient, clock: FakeClock
) -> None:
    user_id, headers, created = await owner_with_key(client)
    before = await stored_events(client)
    clock.advance(3)
    revoked_at = clock.now

    first = await client.post(f"/keys/{created['id']}/revoke", headers=headers)
    clock.advance(3)
    again = await client.post(f"/keys/{created['id']}/revoke", headers=headers)

    assert first.status_code == again.status_code == 200
    event = only_new_event(before, await stored_events(client))
    assert (event.action, event.actor_id, event.api_key_id) == ("key.revoked", user_id, created["id"])
    assert (event.ip, event.at) == ("127.0.0.1", revoked_at)


async def test_admin_revocation_names_the_admin_as_actor(client: KeystileClient) -> None:
    headers = await user_headers(client)
    created = await create_key(client, headers)
    admin = await admin_headers(client)
    admin_id = (await client.get("/users/me", headers=admin)).json()["id"]
    before = await stored_events(client)

    response = await client.post(f"/admin/keys/{created['id']}/revoke", headers=admin)

    assert response.status_code == 200
    event = only_new_event(before, await stored_events(client))
    assert (event.action, event.actor_id, event.api_key_id, event.ip) == (
        "key.revoked",
        admin_id,
        created["id"],
        "127.0.0.1",
    )


async def test_rotation_leaves_one_key_rotated_event_on_the_old_key(client: KeystileClient, clock: FakeClock) -> None:
    user_id, headers, old = await owner_with_key(client)
    before = await stored_events(client)
    clock.advance(3)

    response = await client.post(f"/keys/{old['id']}/rotate", json={"grace_seconds": 60}, headers=headers)

    assert response.status_code == 201, response.text
    new_id = response.json()["id"]
    event = only_new_event(before, await stored_events(client))
    assert (event.action, event.actor_id, event.api_key_id) == ("key.rotated", user_id, old["id"])
    assert (event.ip, event.at) == ("127.0.0.1", clock.now)
    assert event.detail["new_api_key_id"] == new_id
    assert all(event.api_key_id != new_id for event in await stored_events(client))


async def test_using_and_verifying_keys_leaves_no_event(client: KeystileClient) -> None:
    admin = await admin_headers(client)
    created = await create_key(client, await user_headers(client))
    before = (await database_snapshot(client))["audit_events"]

    assert (await client.get("/data/export", headers={"X-API-Key": created["key"]})).status_code == 200
    assert (await client.post("/v1/keys/verify", json={"key": created["key"]}, headers=admin)).status_code == 200

    assert (await database_snapshot(client))["audit_events"] == before


# A failed change leaves none


@pytest.mark.parametrize(
    ("request_for", "status"),
    [
        pytest.param(lambda pk: ("PATCH", f"/keys/{pk}", {"scopes": ["BAD"]}), 422, id="patch-bad-scope"),
        pytest.param(
            lambda pk: ("PATCH", f"/keys/{pk}", {"name": "x", "expires_at": "2000-01-01T00:00:00Z"}),
            422,
            id="patch-past-expiry",
        ),
        pytest.param(lambda pk: ("PATCH", f"/keys/{pk}", {"is_active": True}), 422, id="patch-unknown-field"),
        pytest.param(lambda pk: ("POST", f"/keys/{pk}/rotate", {"grace_seconds": -1}), 422, id="rotate-bad-grace"),
        pytest.param(lambda pk: ("PATCH", f"/keys/{pk + 100}", {"name": "x"}), 404, id="patch-unknown-key"),
        pytest.param(lambda pk: ("POST", f"/keys/{pk + 100}/revoke", None), 404, id="revoke-unknown-key"),
        pytest.param(lambda pk: ("POST", f"/keys/{pk + 100}/rotate", None), 404, id="rotate-unknown-key"),
        pytest.param(lambda pk: ("POST", "/keys/", {"name": ""}), 422, id="create-bad-name"),
        pytest.param(
            lambda pk: ("POST", "/keys/", {"name": "x", "expires_at": "2000-01-01T00:00:00Z"}),
            422,
            id="create-past-expiry",
        ),
    ],
)
async def test_failed_change_leaves_no_event(client: KeystileClient, request_for: Any, status: int) -> None:
    headers = await user_headers(client)
    created = await create_key(client, headers)
    before = await database_snapshot(client)

    method, path, body = request_for(created["id"])
    response = await client.request(method, path, json=body, headers=headers)

    assert response.status_code == status, response.text
    assert await database_snapshot(client) == before


@pytest.mark.parametrize("how", UNROTATABLE)
async def test_refused_rotation_leaves_no_event(client: KeystileClient, clock: FakeClock, how: str) -> None:
    headers = await user_headers(client)
    created = await create_key(client, headers, expires_in=600)
    await make_unrotatable(client, clock, headers, created, how)
    before = await database_snapshot(client)

    response = await client.post(f"/keys/{created['id']}/rotate", headers=headers)

    assert response.status_code == 409
    assert await database_snapshot(client) == before


async def test_other_users_change_attempts_leave_no_event(client: KeystileClient) -> None:
    alice = await user_headers(client, "alice@example.com")
    bob = await user_headers(client, "bob@example.com")
    created = await create_key(client, alice)
    before = await database_snapshot(client)

    statuses = [
        (await client.patch(f"/keys/{created['id']}", json={"name": "x"}, headers=bob)).status_code,
        (await client.post(f"/keys/{created['id']}/revoke", headers=bob)).status_code,
        (await client.post(f"/keys/{created['id']}/rotate", headers=bob)).status_code,
        (await client.post(f"/admin/keys/{created['id']}/revoke", headers=bob)).status_code,
    ]

    assert statuses == [404, 404, 404, 403]
    assert await database_snapshot(client) == before


async def test_refused_registration_leaves_no_event(client: KeystileClient) -> None:
    await register(client)
    before = await database_snapshot(client)

    response = await client.post("/auth/register", json={"email": "alice@example.com", "password": "x" * 12})

    assert response.status_code == 409
    assert await database_snapshot(client) == before


# GET /audit


async def test_user_sees_only_events_on_their_own_account_and_keys(client: KeystileClient) -> None:
    alice = await register(client, "alice@example.com")
    bob = await register(client, "bob@example.com")
    alice_headers = await login(client, "alice@example.com")
    bob_headers = await login(client, "bob@example.com")
    alices = await create_key(client, alice_headers)
    bobs = await create_key(client, bob_headers)
    await client.post("/auth/token", data={"username": "alice@example.com", "password": "wrong password"})
    await client.post("/auth/token", data={"username": "nobody@example.com", "password": "wrong password"})
    admin = await admin_headers(client)
    assert (await client.post(f"/admin/keys/{alices['id']}/revoke", headers=admin)).status_code == 200

    alice_view = await client.get("/audit", headers=alice_headers)
    bob_view = await client.get("/audit", headers=bob_headers)

    assert alice_view.status_code == bob_view.status_code == 200
    assert [(event["action"], event["api_key_id"]) for event in alice_view.json()] == [
        ("key.revoked", alices["id"]),
        ("user.login_failed", None),
        ("key.created", alices["id"]),
        ("user.registered", None),
    ]
    admin_id = (await client.get("/users/me", headers=admin)).json()["id"]
    assert [event["actor_id"] for event in alice_view.json()] == [admin_id, alice["id"], alice["id"], alice["id"]]
    assert [(event["action"], event["api_key_id"]) for event in bob_view.json()] == [
        ("key.created", bobs["id"]),
        ("user.registered", None),
    ]
    assert all(event["actor_id"] == bob["id"] for event in bob_view.json())


async def test_admin_sees_every_event_newest_first(client: KeystileClient, clock: FakeClock) -> None:
    alice_headers = await user_headers(client, "alice@example.com")
    clock.advance(1)
    bob_headers = await user_headers(client, "bob@example.com")
    clock.advance(1)
    await create_key(client, alice_headers)
    clock.advance(1)
    await create_key(client, bob_headers)
    clock.advance(1)
    await client.post("/auth/token", data={"username": "nobody@example.com", "password": "wrong password"})
    clock.advance(1)
    admin = await admin_headers(client)

    response = await client.get("/audit", headers=admin)

    assert response.status_code == 200, response.text
    listed = response.json()
    stored = await stored_events(client)
    assert [event["id"] for event in listed] == [event.id for event in reversed(stored)]
    assert len(listed) == 6
    for item, event in zip(listed, reversed(stored), strict=True):
        assert set(item) == EVENT_FIELDS
        assert (item["action"], item["actor_id"], item["api_key_id"], item["ip"], item["detail"]) == (
            event.action,
            event.actor_id,
            event.api_key_id,
            event.ip,
            event.detail,
        )
        assert parse_time(item["at"]) == event.at
    times = [parse_time(item["at"]) for item in listed]
    assert times == sorted(times, reverse=True)


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        pytest.param({"limit": 1}, slice(0, 1), id="limit-1"),
        pytest.param({"limit": 2, "offset": 1}, slice(1, 3), id="limit-2-offset-1"),
        pytest.param({"limit": 100}, slice(0, 100), id="limit-100"),
        pytest.param({"offset": 100}, slice(100, 100), id="offset-past-the-end"),
        pytest.param({}, slice(0, 50), id="default"),
    ],
)
async def test_audit_pages_with_limit_and_offset(
    client: KeystileClient, params: dict[str, Any], expected: slice
) -> None:
    headers = await user_headers(client)
    for _ in range(3):
        await create_key(client, headers)

    response = await client.get("/audit", params=params, headers=headers)

    assert response.status_code == 200, response.text
    newest_first = [event.id for event in reversed(await stored_events(client))]
    assert [event["id"] for event in response.json()] == newest_first[expected]


async def test_audit_default_page_is_50_events(client: KeystileClient) -> None:
    headers = await user_headers(client)
    created = await create_key(client, headers)
    for index in range(55):
        patched = await client.patch(f"/keys/{created['id']}", json={"name": f"n{index}"}, headers=headers)
        assert patched.status_code == 200

    response = await client.get("/audit", headers=headers)

    assert response.status_code == 200
    assert len(response.json()) == 50
    assert [event["action"] for event in response.json()] == ["key.updated"] * 50
    assert (await client.get("/audit", params={"offset": 50}, headers=headers)).json()[-1]["action"] == (
        "user.registered"
    )


@pytest.mark.parametrize(
    "params",
    [
        pytest.param({"limit": 0}, id="limit-0"),
        pytest.param({"limit": 101}, id="limit-101"),
        pytest.param({"limit": -5}, id="negative-limit"),
        pytest.param({"offset": -1}, id="negative-offset"),
        pytest.param({"limit": "ten"}, id="text-limit"),
    ],
)
async def test_audit_refuses_out_of_range_paging_with_422(client: KeystileClient, params: dict[str, Any]) -> None:
    headers = await user_headers(client)

    response = await client.get("/audit", params=params, headers=headers)

    assert response.status_code == 422, response.text


async def test_audit_needs_a_bearer_token(client: KeystileClient) -> None:
    headers = await user_headers(client)
    created = await create_key(client, headers)

    anonymous = await client.get("/audit")
    with_key = await client.get("/audit", headers={"X-API-Key": created["key"]})

    assert anonymous.status_code == with_key.status_code == 401
    assert anonymous.json() == {"detail": "Not authenticated"}
