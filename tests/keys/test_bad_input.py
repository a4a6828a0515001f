"""Bad input on the key side gets a clear 4xx, never a 5xx, and leaves nothing behind in the database."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import update

from keystile.keys.models import ApiKey
from tests.conftest import MakeClient
from tests.helpers import (
    INVALID_KEY,
    KeystileClient,
    admin_headers,
    create_key,
    database_snapshot,
    user_headers,
    verify,
)

KEY_REQUIRED = {"detail": "API key required (header X-API-Key)"}


def nested(depth: int, container: type = dict) -> Any:
    """A JSON value `depth` levels deep: `nested(1)` is `{}`, `nested(2)` is `{"a": {}}`."""
    value: Any = container()
    for _ in range(depth - 1):
        value = {"a": value} if container is dict else [value]
    return value


def assert_validation_error_without_input(body: dict[str, Any]) -> None:
    assert isinstance(body["detail"], list)
    assert body["detail"]
    for error in body["detail"]:
        assert {"type", "loc", "msg"} <= set(error)
        assert "input" not in error, "a 422 must not echo the rejected input back"


# POST /keys/ with a bad body


async def test_a_stored_key_with_metadata_too_deep_to_serve_does_not_break_any_read(client: KeystileClient) -> None:
    headers = await user_headers(client)
    admin = await admin_headers(client)
    broken = await create_key(client, headers, name="written-before-the-limit")
    await create_key(client, headers, name="healthy", metadata={"team": "a"})
    async with client.keystile.session_factory() as session:  # as a row stored before the depth limit existed
        await session.execute(update(ApiKey).where(ApiKey.id == broken["id"]).values(key_metadata=nested(300)))
        await session.commit()
    client.keystile.key_cache.clear()

    listing = await client.get("/keys/", headers=headers)
    single = await client.get(f"/keys/{broken['id']}", headers=headers)
    everyone = await client.get("/admin/keys", headers=admin)
    verified = await verify(client, admin, broken["key"])
    revoked = await client.post(f"/keys/{broken['id']}/revoke", headers=headers)

    assert [response.status_code for response in (listing, single, everyone, revoked)] == [200, 200, 200, 200]
    assert {key["name"]: key["metadata"] for key in listing.json()} == {
        "written-before-the-limit": {},
        "healthy": {"team": "a"},
    }
    assert single.json()["metadata"] == {}
    assert (verified["code"], verified["metadata"]) == ("VALID", {})
    assert revoked.json()["is_active"] is False


async def test_nan_or_infinity_in_metadata_is_422_and_issues_no_key(client: KeystileClient) -> None:
    headers = await user_headers(client)
    before = await database_snapshot(client)

    for number in (b"NaN", b"Infinity", b"-Infinity"):
        body = b'{"name": "ci", "metadata": {"ratio": ' + number + b"}}"
        response = await client.post("/keys/", content=body, headers=headers | {"Content-Type": "application/json"})
        assert response.status_code == 422, response.text

    assert await database_snapshot(client) == before


async def test_an_expiry_given_in_milliseconds_is_422_on_create_and_on_patch(client: KeystileClient) -> None:
    headers = await user_headers(client)
    created = await create_key(client, headers)
    milliseconds = 99_999_999_999_999  # read as seconds: the year 5138

    on_create = await client.post("/keys/", json={"name": "ms", "expires_at": milliseconds}, headers=headers)
    on_patch = await client.patch(f"/keys/{created['id']}", json={"expires_at": milliseconds}, headers=headers)

    assert on_create.status_code == 422
    assert on_patch.status_code == 422
    assert (await client.get(f"/keys/{created['id']}", headers=headers)).json()["expires_at"] is None


async def test_repeated_scopes_are_stored_once_in_their_order(client: KeystileClient) -> None:
    created = await create_key(client, await user_headers(client), scopes=["b", "a", "b", "a", "c"])

    assert created["scopes"] == ["b", "a", "c"]


@pytest.mark.parametrize(
    ("content", "content_type"),
    [
        pytest.param(b'{"name": ', "application/json", id="truncated-json"),
        pytest.param(b"{'name': 'x'}", "application/json", id="single-quotes"),
        pytest.param(b'{"name": "x",}', "application/json", id="trailing-comma"),
        pytest.param(b"[]", "application/json", id="array"),
        pytest.param(b'"ci"', "application/json", id="bare-string"),
        pytest.param(b"42", "application/json", id="number"),
        pytest.param(b"name=ci", "application/x-www-form-urlencoded", id="form-instead-of-json"),
    ],
)
async def test_malformed_json_body_is_422_and_issues_no_key(
    client: KeystileClient, content: bytes, content_type: str
) -> None:
    headers = await user_headers(client)
    before = await database_snapshot(client)

    response = await client.post("/keys/", content=content, headers=headers | {"Content-Type": content_type})

    assert response.status_code == 422, response.text
    assert_validation_error_without_input(response.json())
    assert await database_snapshot(client) == before


async def test_json_body_that_is_not_utf8_is_a_4xx_and_issues_no_key(client: KeystileClient) -> None:
    """FastAPI answers undecodable bytes with 400 "error parsing the body" rather than 422: a clear 4xx either way."""
    headers = await user_headers(client)
    before = await database_snapshot(client)

    response = await client.post(
        "/keys/", content=b'{"name": "\xff\xfe"}', headers=headers | {"Content-Type": "application/json"}
    )

    assert response.status_code in (400, 422), response.text
    assert "detail" in response.json()
    assert await database_snapshot(client) == before


@pytest.mark.parametrize(
    ("body", "field"),
    [
        pytest.param({}, "name", id="missing-name"),
        pytest.param({"scopes": ["read"]}, "name", id="only-scopes"),
        pytest.param({"name": None}, "name", id="null-name"),
        pytest.param({"name": 123}, "name", id="number-name"),
        pytest.param({"name": ["ci"]}, "name", id="list-name"),
        pytest.param({"name": {"en": "ci"}}, "name", id="object-name"),
        pytest.param({"name": ""}, "name", id="empty-name"),
        pytest.param({"name": "x" * 101}, "name", id="name-of-101"),
        pytest.param({"name": "a\x00b"}, "name", id="name-with-nul"),
        pytest.param({"name": "line\nbreak"}, "name", id="name-with-newline"),
        pytest.param({"name": "ci", "scopes": "read"}, "scopes", id="scopes-not-a-list"),
        pytest.param({"name": "ci", "scopes": [1]}, "scopes", id="scope-not-a-string"),
        pytest.param({"name": "ci", "scopes": ["Read All"]}, "scopes", id="scope-bad-pattern"),
        pytest.param({"name": "ci", "scopes": [f"s{index}" for index in range(51)]}, "scopes", id="51-scopes"),
        pytest.param({"name": "ci", "quota": "lots"}, "quota", id="quota-not-a-number"),
        pytest.param({"name": "ci", "quota": -1}, "quota", id="negative-quota"),
        pytest.param({"name": "ci", "quota": 1.5}, "quota", id="fractional-quota"),
        pytest.param({"name": "ci", "expires_in": 0}, "expires_in", id="expires-in-zero"),
        pytest.param({"name": "ci", "expires_at": "tomorrow"}, "expires_at", id="expires-at-not-a-date"),
        pytest.param({"name": "ci", "expires_at": "2099-01-01T00:00:00"}, "expires_at", id="expires-at-naive"),
        pytest.param({"name": "ci", "expires_at": "2000-01-01T00:00:00Z"}, "expires_at", id="expires-at-past"),
        pytest.param({"name": "ci", "expires_at": "2099-01-01T00:00:00Z", "expires_in": 60}, None, id="both-expiries"),
        pytest.param({"name": "ci", "rate_limit": {"limit": "10", "window_seconds": 60}}, "limit", id="limit-str"),
        pytest.param({"name": "ci", "rate_limit": {"limit": 0, "window_seconds": 60}}, "limit", id="limit-zero"),
        pytest.param({"name": "ci", "rate_limit": {"limit": 10}}, "window_seconds", id="rate-limit-no-window"),
        pytest.param({"name": "ci", "rate_limit": "100/60"}, "rate_limit", id="rate-limit-as-string"),
        pytest.param({"name": "ci", "ip_allowlist": ["not-an-ip"]}, "ip_allowlist", id="bad-ip"),
        pytest.param({"name": "ci", "ip_allowlist": "10.0.0.1"}, "ip_allowlist", id="ip-allowlist-not-a-list"),
        pytest.param({"name": "ci", "metadata": ["a"]}, "metadata", id="metadata-not-an-object"),
        pytest.param({"name": "ci", "metadata": {"blob": "x" * 5000}}, "metadata", id="metadata-over-4kib"),
        pytest.param({"name": "ci", "metadata": {"a": "\x00"}}, "metadata", id="metadata-with-nul"),
        pytest.param({"name": "ci", "metadata": nested(33)}, "metadata", id="metadata-33-deep"),
        pytest.param({"name": "   "}, "name", id="blank-name"),
        pytest.param({"name": "invoice\u202egpj.exe"}, "name", id="name-with-a-bidi-override"),
        pytest.param({"name": "ci", "expires_at": "9999-01-01T00:00:00Z"}, "expires_at", id="expiry-past-10-years"),
        pytest.param({"name": "ci", "metadata": nested(256)}, "metadata", id="metadata-256-deep"),
        pytest.param({"name": "ci", "metadata": {"a": nested(32, container=list)}}, "metadata", id="lists-33-deep"),
    ],
)
async def test_wrong_or_missing_fields_are_422_and_issue_no_key(
    client: KeystileClient, body: dict[str, Any], field: str | None
) -> None:
    headers = await user_headers(client)
    before = await database_snapshot(client)

    response = await client.post("/keys/", json=body, headers=headers)

    assert response.status_code == 422, response.text
    assert_validation_error_without_input(response.json())
    if field is not None:
        assert any(field in error["loc"] for error in response.json()["detail"]), response.text
    assert await database_snapshot(client) == before


async def test_metadata_32_deep_is_stored_and_every_read_of_the_key_serves_it(client: KeystileClient) -> None:
    headers = await user_headers(client)
    admin = await admin_headers(client)
    deepest_allowed = nested(32)

    created = await create_key(client, headers, metadata=deepest_allowed)
    reads = [
        await client.get("/keys/", headers=headers),
        await client.get(f"/keys/{created['id']}", headers=headers),
        await client.get("/admin/keys", headers=admin),
    ]

    assert all(response.status_code == 200 for response in reads), [r.text for r in reads]
    assert reads[1].json()["metadata"] == deepest_allowed
    assert (await verify(client, admin, created["key"]))["metadata"] == deepest_allowed


@pytest.mark.parametrize(
    "body",
    [
        pytest.param({"name": "ci", "owner_id": 999}, id="owner-id"),
        pytest.param({"name": "ci", "user_id": 999}, id="user-id"),
        pytest.param({"name": "ci", "is_active": False}, id="is-active"),
        pytest.param({"name": "ci", "key": "ks_chosen_by_the_caller"}, id="key"),
        pytest.param({"name": "ci", "key_hash": "0" * 64}, id="key-hash"),
        pytest.param({"name": "ci", "Name": "ci"}, id="differently-cased-name"),
        pytest.param({"name": "ci", "rate_limit": {"limit": 1, "window_seconds": 1, "burst": 5}}, id="nested"),
    ],
)
async def test_unknown_json_fields_are_422(client: KeystileClient, body: dict[str, Any]) -> None:
    headers = await user_headers(client)
    before = await database_snapshot(client)

    response = await client.post("/keys/", json=body, headers=headers)

    assert response.status_code == 422, response.text
    assert_validation_error_without_input(response.json())
    assert any(error["type"] == "extra_forbidden" for error in response.json()["detail"])
    assert await database_snapshot(client) == before


@pytest.mark.parametrize(
    "name",
    [
        pytest.param("", id="empty"),
        pytest.param("x" * 101, id="101-characters"),
        pytest.param("a\x00b", id="nul-byte"),
        pytest.param("tab\there", id="tab"),
    ],
)
async def test_bad_query_name_is_422_and_issues_no_key(client: KeystileClient, name: str) -> None:
    headers = await user_headers(client)
    before = await database_snapshot(client)

    response = await client.post("/keys/", params={"name": name}, headers=headers)

    assert response.status_code == 422, response.text
    assert_validation_error_without_input(response.json())
    assert await database_snapshot(client) == before


@pytest.mark.parametrize(
    "name",
    [
        pytest.param("x" * 100, id="100-characters"),
        pytest.param("x", id="one-character"),
        pytest.param("clé de production 🔑", id="unicode"),
        pytest.param("x" * 99 + "🔑", id="100-characters-with-astral"),
    ],
)
@pytest.mark.parametrize("where", ["query", "json"])
async def test_name_at_the_limits_is_stored_exactly(client: KeystileClient, name: str, where: str) -> None:
    headers = await user_headers(client)
    sent: dict[str, Any] = {"params": {"name": name}} if where == "query" else {"json": {"name": name}}

    response = await client.post("/keys/", headers=headers, **sent)

    assert response.status_code == 201, response.text
    assert response.json()["name"] == name
    async with client.keystile.session_factory() as session:
        row = await session.get(ApiKey, response.json()["id"])
    assert row is not None
    assert row.name == name


# X-API-Key


def assert_invalid_key_response(response: Any) -> None:
    assert response.status_code == 401, response.text
    assert response.json() == INVALID_KEY
    assert response.headers["WWW-Authenticate"] == "APIKey"


@pytest.mark.parametrize(
    "make_header",
    [
        pytest.param(lambda key: ("A" * 15_000).encode(), id="fifteen-thousand-characters"),
        pytest.param(lambda key: (key + "A" * 15_000).encode(), id="valid-key-padded-to-15000-characters"),
        pytest.param(lambda key: key[:513].ljust(513, "A").encode(), id="513-characters"),
        pytest.param(lambda key: (key + "é").encode(), id="trailing-accent-utf8"),
        pytest.param(lambda key: (key[:-1] + "é").encode(), id="accent-replacing-last-char-utf8"),
        pytest.param(lambda key: (key[:-1] + "é").encode("latin-1"), id="accent-latin1"),
        pytest.param(lambda key: key.replace("_", "_🔑", 1).encode(), id="emoji"),
        pytest.param(lambda key: (key[:10] + "\u0430" + key[11:]).encode(), id="cyrillic-lookalike"),
        pytest.param(lambda key: (key + "\x00").encode(), id="trailing-nul"),
        pytest.param(lambda key: (key[:20] + "\x00" + key[20:]).encode(), id="nul-inside"),
        pytest.param(lambda key: (key[:20] + "\x00" + key[21:]).encode(), id="nul-replacing-a-character"),
        pytest.param(lambda key: b"\x00" * 64, id="only-nuls"),
        pytest.param(lambda key: b"\xff\xfe" + key.encode(), id="byte-order-mark"),
        pytest.param(lambda key: key[:-1].encode(), id="truncated"),
        pytest.param(lambda key: key.upper().encode(), id="upper-cased"),
        pytest.param(lambda key: f"Bearer {key}".encode(), id="with-bearer-scheme"),
    ],
)
async def test_bad_api_key_header_is_401_and_changes_nothing(client: KeystileClient, make_header: Any) -> None:
    headers = await user_headers(client)
    created = await create_key(client, headers)
    before = await database_snapshot(client)

    response = await client.get("/data/export", headers={"X-API-Key": make_header(created["key"])})

    assert_invalid_key_response(response)
    assert await database_snapshot(client) == before
    works = await client.get("/data/export", headers={"X-API-Key": created["key"]})
    assert works.status_code == 200, "the real key must still work after the bad attempt"


@pytest.mark.parametrize(
    "make_header",
    [
        pytest.param(lambda key: "A" * 1024 * 1024, id="one-megabyte"),
        pytest.param(lambda key: key + "A" * (1024 * 1024), id="valid-key-padded-to-a-megabyte"),
    ],
)
async def test_a_key_header_over_the_header_limit_is_431_and_changes_nothing(
    client: KeystileClient, make_header: Any
) -> None:
    headers = await user_headers(client)
    created = await create_key(client, headers)
    before = await database_snapshot(client)

    response = await client.get("/data/export", headers={"X-API-Key": make_header(created["key"])})

    assert response.status_code == 431
    assert await database_snapshot(client) == before
    works = await client.get("/data/export", headers={"X-API-Key": created["key"]})
    assert works.status_code == 200, "the real key must still work after the bad attempt"


async def test_unknown_well_formed_key_is_401_with_the_same_body(client: KeystileClient) -> None:
    from keystile.keys.format import generate_key

    headers = await user_headers(client)
    await create_key(client, headers)
    before = await database_snapshot(client)

    response = await client.get("/data/export", headers={"X-API-Key": generate_key("ks").raw})

    assert_invalid_key_response(response)
    assert await database_snapshot(client) == before


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param({}, id="no-header"),
        pytest.param({"X-API-Key": ""}, id="empty-header"),
        pytest.param({"Authorization": "Bearer ks_abc"}, id="only-authorization"),
        pytest.param({"X-Api-Key-Typo": "ks_abc"}, id="misspelled-header"),
    ],
)
async def test_missing_key_is_401_naming_the_header(client: KeystileClient, headers: dict[str, str]) -> None:
    response = await client.get("/data/export", headers=headers)

    assert response.status_code == 401
    assert response.json() == KEY_REQUIRED
    assert response.headers["WWW-Authenticate"] == "APIKey"


async def test_header_name_is_case_insensitive(client: KeystileClient) -> None:
    headers = await user_headers(client)
    created = await create_key(client, headers)

    response = await client.get("/data/export", headers={"x-api-key": created["key"]})

    assert response.status_code == 200
    assert response.json()["data"] == []


# ?api_key=


async def test_query_key_is_accepted_when_enabled(make_client: MakeClient) -> None:
    client = await make_client(accept_query_key=True)
    headers = await user_headers(client)
    owner_id = (await client.get("/users/me", headers=headers)).json()["id"]
    created = await create_key(client, headers)

    response = await client.get("/data/export", params={"api_key": created["key"]})

    assert response.status_code == 200, response.text
    assert response.json() == {"owner": owner_id, "data": []}
    await client.keystile.usage.flush()
    async with client.keystile.session_factory() as session:
        row = await session.get(ApiKey, created["id"])
    assert row is not None
    assert row.use_count == 1


async def test_missing_key_names_the_query_parameter_when_it_is_enabled(make_client: MakeClient) -> None:
    client = await make_client(accept_query_key=True)

    response = await client.get("/data/export")

    assert response.status_code == 401
    detail = response.json()["detail"]
    assert detail.startswith("API key required (")
    assert "X-API-Key" in detail
    assert "api_key" in detail
    assert response.headers["WWW-Authenticate"] == "APIKey"


@pytest.mark.parametrize(
    "api_key",
    [
        pytest.param("not-a-key", id="garbage"),
        pytest.param("ks_" + "A" * 12 + "_" + "B" * 49, id="bad-checksum"),
        pytest.param("ks_\x00", id="nul"),
        pytest.param("clé🔑", id="unicode"),
        pytest.param("A" * 10_000, id="10-kb"),
    ],
)
async def test_bad_query_key_is_401_when_enabled(make_client: MakeClient, api_key: str) -> None:
    client = await make_client(accept_query_key=True)
    headers = await user_headers(client)
    await create_key(client, headers)
    before = await database_snapshot(client)

    response = await client.get("/data/export", params={"api_key": api_key})

    assert_invalid_key_response(response)
    assert await database_snapshot(client) == before


async def test_query_key_is_refused_with_a_message_when_disabled(client: KeystileClient) -> None:
    headers = await user_headers(client)
    created = await create_key(client, headers)
    before = await database_snapshot(client)

    response = await client.get("/data/export", params={"api_key": created["key"]})

    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == "APIKey"
    detail = response.json()["detail"]
    assert "query" in detail
    assert "disabled" in detail
    assert created["key"] not in response.text
    assert await database_snapshot(client) == before


async def test_empty_query_key_when_disabled_is_just_a_missing_key(client: KeystileClient) -> None:
    response = await client.get("/data/export", params={"api_key": ""})

    assert response.status_code == 401
    assert response.json() == KEY_REQUIRED


@pytest.mark.parametrize(
    ("content", "content_type"),
    [
        pytest.param(b'{"name": "caf\xe9"}', "application/json", id="invalid-utf-8"),
        pytest.param('{"name": "café"}'.encode("latin-1"), "application/json; charset=latin-1", id="latin-1-charset"),
        pytest.param(b"[" * 5000 + b"]" * 5000, "application/json", id="json-nested-5000-deep"),
        pytest.param(b'{"name": "ci", "quota": ' + b"1" * 4301 + b"}", "application/json", id="integer-of-4301-digits"),
    ],
)
async def test_a_body_that_cannot_be_decoded_is_422_and_issues_no_key(
    client: KeystileClient, content: bytes, content_type: str
) -> None:
    headers = await user_headers(client)
    before = await database_snapshot(client)

    response = await client.post("/keys/", content=content, headers=headers | {"Content-Type": content_type})

    assert response.status_code == 422, response.text
    [error] = response.json()["detail"]
    assert (error["type"], error["loc"]) == ("json_invalid", ["body"])
    assert await database_snapshot(client) == before
