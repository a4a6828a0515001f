"""The key routes of API.md section 3: issue, list, read, revoke; ownership; what is and is not stored."""

from __future__ import annotations

import hashlib
import hmac
import re
from typing import Any

import pytest
from sqlalchemy import select

from keystile.audit.models import AuditEvent
from keystile.clock import FakeClock
from keystile.keys.models import ApiKey
from keystile.ratelimit.policy import RateLimitPolicy
from tests.helpers import (
    CREATED_FIELDS,
    INVALID_KEY,
    READ_FIELDS,
    KeystileClient,
    create_key,
    key_count,
    parse_time,
    row_values,
    stored_key,
    user_headers,
)


async def all_stored_keys(client: KeystileClient) -> list[ApiKey]:
    async with client.keystile.session_factory() as session:
        return list((await session.scalars(select(ApiKey).order_by(ApiKey.id))).all())


async def audit_actions(client: KeystileClient, api_key_id: int) -> list[str]:
    async with client.keystile.session_factory() as session:
        query = select(AuditEvent.action).where(AuditEvent.api_key_id == api_key_id).order_by(AuditEvent.id)
        return list((await session.scalars(query)).all())


# POST /keys/


@pytest.mark.parametrize(
    ("path", "params", "json"),
    [
        pytest.param("/keys/", {"name": "ci"}, None, id="query-name"),
        pytest.param("/keys", {"name": "ci"}, None, id="query-name-without-slash"),
        pytest.param("/keys/", None, {"name": "ci"}, id="json-body"),
        pytest.param("/keys", None, {"name": "ci"}, id="json-body-without-slash"),
    ],
)
async def test_create_key_returns_the_raw_key_once_with_no_store(
    client: KeystileClient, clock: FakeClock, path: str, params: dict[str, str] | None, json: dict[str, Any] | None
) -> None:
    headers = await user_headers(client)

    response = await client.post(path, params=params, json=json, headers=headers)

    assert response.status_code == 201, response.text
    assert response.headers["Cache-Control"] == "no-store"
    body = response.json()
    assert set(body) >= CREATED_FIELDS
    assert "key_hash" not in body
    assert body["name"] == "ci"
    assert body["is_active"] is True
    assert body["scopes"] == []
    assert body["expires_at"] is None
    assert body["rate_limit"] is None
    assert body["quota_remaining"] is None
    assert body["ip_allowlist"] == []
    assert body["metadata"] == {}
    assert parse_time(body["created_at"]) == clock.now
    prefix, key_id, tail = body["key"].rsplit("_", 2)
    assert prefix == "ks"
    assert re.fullmatch(r"[0-9A-Za-z]{12}", key_id)
    assert re.fullmatch(r"[0-9A-Za-z]{49}", tail)
    assert body["hint"] == f"ks_{key_id}_…{body['key'][-4:]}"

    row = await stored_key(client, body["id"])
    assert row.key_id == key_id
    assert row.name == "ci"
    assert row.is_active is True
    assert row.hint == body["hint"]
    assert await audit_actions(client, body["id"]) == ["key.created"]


async def test_create_key_with_every_json_field_stores_them(client: KeystileClient, clock: FakeClock) -> None:
    headers = await user_headers(client)
    spec = {
        "name": "gateway",
        "scopes": ["keys:verify", "read"],
        "expires_in": 3600,
        "rate_limit": {"limit": 10, "window_seconds": 60},
        "quota": 1000,
        "ip_allowlist": ["10.0.0.0/8", "2001:db8::1"],
        "metadata": {"team": "payments", "tier": 2},
    }

    response = await client.post("/keys/", json=spec, headers=headers)

    assert response.status_code == 201, response.text
    body = response.json()
    assert body["scopes"] == ["keys:verify", "read"]
    assert (parse_time(body["expires_at"]) - clock.now).total_seconds() == 3600
    assert body["rate_limit"] == {"limit": 10, "window_seconds": 60}
    assert body["quota_remaining"] == 1000
    assert body["ip_allowlist"] == ["10.0.0.0/8", "2001:db8::1/128"]
    assert body["metadata"] == {"team": "payments", "tier": 2}

    row = await stored_key(client, body["id"])
    assert row.scopes == ["keys:verify", "read"]
    assert row.expires_at is not None
    assert (row.expires_at - clock.now).total_seconds() == 3600
    assert row.rate_limit == RateLimitPolicy(limit=10, window_seconds=60)
    assert row.quota_remaining == 1000
    assert row.ip_allowlist == ["10.0.0.0/8", "2001:db8::1/128"]
    assert row.key_metadata == {"team": "payments", "tier": 2}


async def test_only_an_hmac_of_the_key_is_stored(client: KeystileClient) -> None:
    headers = await user_headers(client)

    created = await create_key(client, headers)

    row = await stored_key(client, created["id"])
    raw = created["key"]
    assert re.fullmatch(r"[0-9a-f]{64}", row.key_hash)
    assert row.key_hash == hmac.new(client.keystile.pepper, raw.encode(), hashlib.sha256).hexdigest()
    assert row.key_hash != hashlib.sha256(raw.encode()).hexdigest(), "an unpeppered hash would be testable offline"
    assert row.hash_scheme == "hmac-sha256-v1"
    assert row.key_id == raw.rsplit("_", 2)[1]
    secret = raw.rsplit("_", 2)[2][:43]
    for value in row_values(row).values():
        assert raw not in str(value)
        assert secret not in str(value)


async def test_two_keys_get_different_key_ids_and_hashes(client: KeystileClient) -> None:
    headers = await user_headers(client)

    first = await create_key(client, headers, name="one")
    second = await create_key(client, headers, name="two")

    rows = await all_stored_keys(client)
    assert [row.id for row in rows] == [first["id"], second["id"]]
    assert rows[0].key_id != rows[1].key_id
    assert rows[0].key_hash != rows[1].key_hash
    assert first["key"] != second["key"]


@pytest.mark.parametrize(
    ("params", "json"),
    [
        pytest.param({"name": "q"}, {"name": "b"}, id="both"),
        pytest.param(None, None, id="neither"),
        pytest.param({"name": "q"}, {}, id="query-and-empty-body"),
    ],
)
async def test_create_key_needs_exactly_one_of_query_name_and_body(
    client: KeystileClient, params: dict[str, str] | None, json: dict[str, Any] | None
) -> None:
    headers = await user_headers(client)

    response = await client.post("/keys/", params=params, json=json, headers=headers)

    assert response.status_code == 422, response.text
    assert isinstance(response.json()["detail"], list)
    assert await key_count(client) == 0


async def test_created_key_opens_data_export_for_its_owner(client: KeystileClient) -> None:
    owner = await client.get("/users/me", headers=(headers := await user_headers(client)))
    created = await create_key(client, headers)

    response = await client.get("/data/export", headers={"X-API-Key": created["key"]})

    assert response.status_code == 200, response.text
    assert response.json() == {"owner": owner.json()["id"], "data": []}
    assert response.json() == {"owner": created["owner_id"], "data": []}


# The raw key is never shown again


async def test_raw_key_never_appears_in_list_or_read(client: KeystileClient) -> None:
    headers = await user_headers(client)
    created = await create_key(client, headers)
    secret = created["key"].rsplit("_", 2)[2][:43]
    row = await stored_key(client, created["id"])

    listed = await client.get("/keys/", headers=headers)
    read = await client.get(f"/keys/{created['id']}", headers=headers)

    for response in (listed, read):
        assert response.status_code == 200
        assert created["key"] not in response.text
        assert secret not in response.text
        assert row.key_hash not in response.text
    assert "key" not in listed.json()[0]
    assert "key" not in read.json()
    assert "key_hash" not in read.json()


# GET /keys/


async def test_list_shows_own_keys_newest_first_with_read_fields(client: KeystileClient) -> None:
    headers = await user_headers(client)
    ids = [(await create_key(client, headers, name=f"key-{index}"))["id"] for index in range(3)]

    response = await client.get("/keys/", headers=headers)

    assert response.status_code == 200
    body = response.json()
    assert [item["id"] for item in body] == list(reversed(ids))
    assert [item["name"] for item in body] == ["key-2", "key-1", "key-0"]
    for item in body:
        assert set(item) >= READ_FIELDS
        assert item["use_count"] == 0
        assert item["last_used_at"] is None


@pytest.mark.parametrize(
    ("params", "expected_names"),
    [
        pytest.param({"limit": 2}, ["key-4", "key-3"], id="limit"),
        pytest.param({"limit": 2, "offset": 2}, ["key-2", "key-1"], id="second-page"),
        pytest.param({"offset": 4}, ["key-0"], id="last-page"),
        pytest.param({"offset": 5}, [], id="past-the-end"),
        pytest.param({"limit": 1}, ["key-4"], id="limit-1"),
        pytest.param({"limit": 100}, ["key-4", "key-3", "key-2", "key-1", "key-0"], id="limit-100"),
    ],
)
async def test_list_pages_with_limit_and_offset(
    client: KeystileClient, params: dict[str, int], expected_names: list[str]
) -> None:
    headers = await user_headers(client)
    for index in range(5):
        await create_key(client, headers, name=f"key-{index}")

    response = await client.get("/keys/", params=params, headers=headers)

    assert response.status_code == 200, response.text
    assert [item["name"] for item in response.json()] == expected_names


async def test_list_defaults_to_50_keys(client: KeystileClient) -> None:
    headers = await user_headers(client)
    owner_id = (await client.get("/users/me", headers=headers)).json()["id"]
    async with client.keystile.session_factory() as session:
        for index in range(51):
            session.add(
                ApiKey(
                    key_id=f"{index:012d}",
                    key_hash=f"{index:064x}",
                    hash_scheme="hmac-sha256-v1",
                    hint=f"ks_{index:012d}_…abcd",
                    name=f"key-{index}",
                    user_id=owner_id,
                    created_at=client.keystile.clock(),
                )
            )
        await session.commit()

    response = await client.get("/keys/", headers=headers)

    assert response.status_code == 200
    names = [item["name"] for item in response.json()]
    assert len(names) == 50
    assert names[0] == "key-50"
    assert names[-1] == "key-1"


@pytest.mark.parametrize(
    "params",
    [
        pytest.param({"limit": 0}, id="limit-0"),
        pytest.param({"limit": 101}, id="limit-101"),
        pytest.param({"limit": -1}, id="negative-limit"),
        pytest.param({"offset": -1}, id="negative-offset"),
        pytest.param({"limit": "ten"}, id="limit-not-a-number"),
        pytest.param({"offset": 2**70}, id="offset-beyond-any-integer-column"),
    ],
)
async def test_list_refuses_out_of_range_paging_with_422(client: KeystileClient, params: dict[str, Any]) -> None:
    headers = await user_headers(client)
    await create_key(client, headers)

    response = await client.get("/keys/", params=params, headers=headers)

    assert response.status_code == 422, response.text
    assert response.json()["detail"][0]["loc"][0] == "query"


# GET /keys/{id}


async def test_read_key_returns_its_fields(client: KeystileClient, clock: FakeClock) -> None:
    headers = await user_headers(client)
    created = await create_key(client, headers, name="reader", scopes=["read"])

    response = await client.get(f"/keys/{created['id']}", headers=headers)

    assert response.status_code == 200
    body = response.json()
    assert set(body) >= READ_FIELDS
    assert {field: body[field] for field in CREATED_FIELDS - {"key"}} == {
        field: created[field] for field in CREATED_FIELDS - {"key"}
    }
    assert body["use_count"] == 0
    assert body["last_used_at"] is None
    assert body["revoked_at"] is None
    assert body["rotated_from"] is None


@pytest.mark.parametrize(
    "path",
    [
        pytest.param("/keys/999", id="unknown-id"),
        pytest.param("/keys/2147483647", id="largest-id"),
    ],
)
async def test_read_unknown_key_is_404(client: KeystileClient, path: str) -> None:
    headers = await user_headers(client)

    response = await client.get(path, headers=headers)

    assert response.status_code == 404
    assert response.json() == {"detail": "API key not found"}


@pytest.mark.parametrize(
    "path",
    [
        pytest.param("/keys/0", id="zero"),
        pytest.param("/keys/-1", id="negative"),
        pytest.param("/keys/abc", id="not-a-number"),
        pytest.param("/keys/99999999999999999999", id="beyond-int64"),
    ],
)
async def test_read_key_with_an_impossible_id_is_422(client: KeystileClient, path: str) -> None:
    headers = await user_headers(client)

    response = await client.get(path, headers=headers)

    assert response.status_code == 422, response.text


# POST /keys/{id}/revoke


async def test_revoked_key_is_rejected_with_401(client: KeystileClient, clock: FakeClock) -> None:
    headers = await user_headers(client)
    created = await create_key(client, headers)
    key = {"X-API-Key": created["key"]}
    assert (await client.get("/data/export", headers=key)).status_code == 200

    revoked = await client.post(f"/keys/{created['id']}/revoke", headers=headers)

    assert revoked.status_code == 200, revoked.text
    assert revoked.json()["is_active"] is False
    assert parse_time(revoked.json()["revoked_at"]) == clock.now
    refused = await client.get("/data/export", headers=key)
    assert refused.status_code == 401
    assert refused.json() == INVALID_KEY
    assert refused.headers["WWW-Authenticate"] == "APIKey"
    row = await stored_key(client, created["id"])
    assert row.is_active is False
    assert row.revoked_at == clock.now


async def test_revoke_is_idempotent_and_keeps_the_first_revocation(client: KeystileClient, clock: FakeClock) -> None:
    headers = await user_headers(client)
    created = await create_key(client, headers)
    first_revocation = clock.now
    first = await client.post(f"/keys/{created['id']}/revoke", headers=headers)
    clock.advance(60)

    again = await client.post(f"/keys/{created['id']}/revoke", headers=headers)

    assert first.status_code == again.status_code == 200
    assert again.json() == first.json()
    assert again.json()["is_active"] is False
    row = await stored_key(client, created["id"])
    assert row.is_active is False
    assert row.revoked_at == first_revocation
    assert await audit_actions(client, created["id"]) == ["key.created", "key.revoked"]
    refused = await client.get("/data/export", headers={"X-API-Key": created["key"]})
    assert refused.status_code == 401
    assert refused.json() == INVALID_KEY


async def test_revoke_unknown_key_is_404(client: KeystileClient) -> None:
    headers = await user_headers(client)

    response = await client.post("/keys/12345/revoke", headers=headers)

    assert response.status_code == 404
    assert response.json() == {"detail": "API key not found"}


# Without a user


@pytest.mark.parametrize(
    ("method", "path"),
    [
        pytest.param("POST", "/keys/?name=x", id="create"),
        pytest.param("GET", "/keys/", id="list"),
        pytest.param("GET", "/keys/1", id="read"),
        pytest.param("POST", "/keys/1/revoke", id="revoke"),
    ],
)
@pytest.mark.parametrize(
    "authorization",
    [
        pytest.param(None, id="no-header"),
        pytest.param("Bearer not-a-jwt", id="garbage-token"),
        pytest.param("Basic YWxpY2U6cHc=", id="basic-scheme"),
    ],
)
async def test_key_routes_need_a_bearer_token(
    client: KeystileClient, method: str, path: str, authorization: str | None
) -> None:
    headers = await user_headers(client)
    created = await create_key(client, headers)
    before = row_values(await stored_key(client, created["id"]))
    sent = {"Authorization": authorization} if authorization else {}

    response = await client.request(method, path, headers=sent)

    assert response.status_code == 401, response.text
    assert response.json() == {"detail": "Not authenticated"}
    assert response.headers["WWW-Authenticate"] == "Bearer"
    assert await key_count(client) == 1
    assert row_values(await stored_key(client, created["id"])) == before


async def test_api_key_is_not_a_substitute_for_the_bearer_token(client: KeystileClient) -> None:
    headers = await user_headers(client)
    created = await create_key(client, headers)

    response = await client.get("/keys/", headers={"X-API-Key": created["key"]})

    assert response.status_code == 401
    assert response.json() == {"detail": "Not authenticated"}


# Ownership


@pytest.mark.parametrize(
    ("method", "path", "json"),
    [
        pytest.param("GET", "/keys/{pk}", None, id="read"),
        pytest.param("POST", "/keys/{pk}/revoke", None, id="revoke"),
        pytest.param("PATCH", "/keys/{pk}", {"name": "stolen"}, id="update"),
        pytest.param("POST", "/keys/{pk}/rotate", {"grace_seconds": 0}, id="rotate"),
    ],
)
async def test_other_users_key_is_404_and_unchanged(
    client: KeystileClient, method: str, path: str, json: dict[str, Any] | None
) -> None:
    alice = await user_headers(client, "alice@example.com")
    bob = await user_headers(client, "bob@example.com")
    created = await create_key(client, alice)
    before = row_values(await stored_key(client, created["id"]))

    response = await client.request(method, path.format(pk=created["id"]), json=json, headers=bob)

    assert response.status_code == 404, response.text
    assert response.json() == {"detail": "API key not found"}
    assert row_values(await stored_key(client, created["id"])) == before
    assert await key_count(client) == 1
    assert await audit_actions(client, created["id"]) == ["key.created"]
    still_works = await client.get("/data/export", headers={"X-API-Key": created["key"]})
    assert still_works.status_code == 200


async def test_other_users_key_and_an_unknown_id_look_the_same(client: KeystileClient) -> None:
    alice = await user_headers(client, "alice@example.com")
    bob = await user_headers(client, "bob@example.com")
    created = await create_key(client, alice)

    someone_elses = await client.get(f"/keys/{created['id']}", headers=bob)
    missing = await client.get(f"/keys/{created['id'] + 1000}", headers=bob)

    assert (someone_elses.status_code, someone_elses.json()) == (missing.status_code, missing.json())


async def test_list_shows_only_the_callers_keys(client: KeystileClient) -> None:
    alice = await user_headers(client, "alice@example.com")
    bob = await user_headers(client, "bob@example.com")
    alices = await create_key(client, alice, name="alice-key")
    bobs = await create_key(client, bob, name="bob-key")

    alice_list = (await client.get("/keys/", headers=alice)).json()
    bob_list = (await client.get("/keys/", headers=bob)).json()

    assert [item["id"] for item in alice_list] == [alices["id"]]
    assert [item["id"] for item in bob_list] == [bobs["id"]]
    rows = await all_stored_keys(client)
    assert {row.id: row.user_id for row in rows} == {
        alices["id"]: alice_list[0]["owner_id"],
        bobs["id"]: bob_list[0]["owner_id"],
    }
    assert alice_list[0]["owner_id"] != bob_list[0]["owner_id"]
