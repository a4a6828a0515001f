"""Scopes (issue 3): `RequireScopes` answers 403 naming the missing scope; bad key settings are 422, key unchanged."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Annotated, Any

import httpx
import pytest
from fastapi import FastAPI

from keystile.clock import FakeClock
from keystile.fastapi import APIKeyAuth, KeyRecord, RequireScopes
from tests.helpers import KeystileClient, create_key, database_snapshot, stored_key, user_headers


@asynccontextmanager
async def scoped_app(client: KeystileClient) -> AsyncIterator[httpx.AsyncClient]:
    """A separate FastAPI app that embeds the running keystile, as a library user would."""
    app = FastAPI()
    client.keystile.install(app)

    @app.post("/reports")
    async def write_report(key: Annotated[KeyRecord, RequireScopes("data:write")]) -> dict[str, Any]:
        return {"key": key.id, "scopes": sorted(key.scopes)}

    @app.delete("/reports")
    async def purge_reports(key: Annotated[KeyRecord, RequireScopes("data:read", "data:write")]) -> dict[str, Any]:
        return {"key": key.id}

    @app.get("/reports")
    async def read_reports(key: APIKeyAuth) -> dict[str, Any]:
        return {"key": key.id}

    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://embedded") as embedded:
        yield embedded


# RequireScopes


@pytest.mark.parametrize(
    ("scopes", "method", "status", "detail"),
    [
        pytest.param(["data:write"], "POST", 200, None, id="held"),
        pytest.param(["data:read", "data:write"], "POST", 200, None, id="held-among-others"),
        pytest.param([], "POST", 403, "API key lacks required scope: data:write", id="no-scopes"),
        pytest.param(["data:read"], "POST", 403, "API key lacks required scope: data:write", id="other-scope"),
        pytest.param(["data:writer"], "POST", 403, "API key lacks required scope: data:write", id="prefix-is-not-it"),
        pytest.param(["data"], "POST", 403, "API key lacks required scope: data:write", id="parent-is-not-it"),
        pytest.param(["data:read", "data:write"], "DELETE", 200, None, id="both-held"),
        pytest.param(["data:write"], "DELETE", 403, "API key lacks required scope: data:read", id="first-missing"),
        pytest.param(["data:read"], "DELETE", 403, "API key lacks required scope: data:write", id="second-missing"),
        pytest.param([], "GET", 200, None, id="no-scope-required"),
    ],
)
async def test_require_scopes_admits_only_keys_holding_every_scope(
    client: KeystileClient, scopes: list[str], method: str, status: int, detail: str | None
) -> None:
    created = await create_key(client, await user_headers(client), scopes=scopes)

    async with scoped_app(client) as embedded:
        response = await embedded.request(method, "/reports", headers={"X-API-Key": created["key"]})

    assert response.status_code == status, response.text
    if detail is None:
        assert response.json()["key"] == created["id"]
    else:
        assert response.json() == {"detail": detail}
    await client.keystile.usage.flush()
    assert (await stored_key(client, created["id"])).use_count == (1 if status == 200 else 0)


async def test_require_scopes_still_answers_401_for_a_missing_or_bad_key(client: KeystileClient) -> None:
    async with scoped_app(client) as embedded:
        missing = await embedded.post("/reports")
        bad = await embedded.post("/reports", headers={"X-API-Key": "ks_nope"})

    assert missing.status_code == bad.status_code == 401
    assert missing.json() == {"detail": "API key required (header X-API-Key)"}
    assert bad.json() == {"detail": "Invalid or expired API key"}
    assert bad.headers["WWW-Authenticate"] == "APIKey"


async def test_scope_granted_by_patch_opens_the_route_on_the_next_request(client: KeystileClient) -> None:
    headers = await user_headers(client)
    created = await create_key(client, headers, scopes=["data:read"])
    key = {"X-API-Key": created["key"]}

    async with scoped_app(client) as embedded:
        before = await embedded.post("/reports", headers=key)
        patched = await client.patch(f"/keys/{created['id']}", json={"scopes": ["data:write"]}, headers=headers)
        after = await embedded.post("/reports", headers=key)
        revoked_scope = await client.patch(f"/keys/{created['id']}", json={"scopes": []}, headers=headers)
        again = await embedded.post("/reports", headers=key)

    assert before.status_code == 403
    assert patched.status_code == revoked_scope.status_code == 200
    assert after.status_code == 200, after.text
    assert after.json()["scopes"] == ["data:write"]
    assert again.status_code == 403
    assert again.json() == {"detail": "API key lacks required scope: data:write"}


async def test_verify_endpoint_requires_keys_verify_of_a_caller_key(client: KeystileClient) -> None:
    headers = await user_headers(client)
    caller = await create_key(client, headers, scopes=["keys:read"])

    response = await client.post("/v1/keys/verify", json={"key": caller["key"]}, headers={"X-API-Key": caller["key"]})

    assert response.status_code == 403
    assert response.json() == {"detail": "API key lacks required scope: keys:verify"}


def test_required_scopes_appear_in_the_openapi_security_of_the_route() -> None:
    app = FastAPI()

    @app.post("/reports")
    async def write_report(key: Annotated[KeyRecord, RequireScopes("data:write")]) -> None:
        return None

    operation = app.openapi()["paths"]["/reports"]["post"]

    assert operation["security"] == [{"APIKeyHeader": ["data:write"]}]


# Bad key settings: 422 at creation and on PATCH, nothing stored or changed

BAD_SETTINGS = [
    pytest.param({"scopes": ["Read"]}, id="scope-uppercase"),
    pytest.param({"scopes": ["1read"]}, id="scope-leading-digit"),
    pytest.param({"scopes": [":read"]}, id="scope-leading-colon"),
    pytest.param({"scopes": ["data read"]}, id="scope-with-space"),
    pytest.param({"scopes": [" read"]}, id="scope-leading-space"),
    pytest.param({"scopes": [""]}, id="scope-empty"),
    pytest.param({"scopes": ["data/read"]}, id="scope-slash"),
    pytest.param({"scopes": ["d" + "a" * 64]}, id="scope-65-characters"),
    pytest.param({"scopes": [f"scope{i}" for i in range(51)]}, id="51-scopes"),
    pytest.param({"scopes": "read"}, id="scopes-not-a-list"),
    pytest.param({"metadata": {"blob": "x" * 4086}}, id="metadata-one-byte-over-4-kib"),
    pytest.param({"metadata": {"blob": "é" * 2045}}, id="metadata-over-4-kib-in-utf8-bytes"),
    pytest.param({"metadata": ["a", "b"]}, id="metadata-list"),
    pytest.param({"metadata": "text"}, id="metadata-string"),
    pytest.param({"metadata": 42}, id="metadata-number"),
    pytest.param({"ip_allowlist": ["10.0.0.0/33"]}, id="cidr-prefix-too-long"),
    pytest.param({"ip_allowlist": ["2001:db8::/129"]}, id="ipv6-cidr-prefix-too-long"),
    pytest.param({"ip_allowlist": ["10.0.0.256"]}, id="ipv4-octet-too-big"),
    pytest.param({"ip_allowlist": ["example.com"]}, id="hostname"),
    pytest.param({"ip_allowlist": ["10.0.0.0/8/8"]}, id="two-slashes"),
    pytest.param({"ip_allowlist": [""]}, id="empty-entry"),
    pytest.param({"ip_allowlist": "10.0.0.0/8"}, id="allowlist-not-a-list"),
    pytest.param({"rate_limit": {"limit": 0, "window_seconds": 60}}, id="rate-limit-zero"),
    pytest.param({"rate_limit": {"limit": 5}}, id="rate-limit-without-window"),
    pytest.param({"quota": -1}, id="negative-quota"),
    pytest.param({"expires_in": 0}, id="expires-in-zero"),
]


@pytest.mark.parametrize("settings", BAD_SETTINGS)
async def test_bad_settings_at_creation_are_422_and_issue_no_key(
    client: KeystileClient, settings: dict[str, Any]
) -> None:
    headers = await user_headers(client)
    before = await database_snapshot(client)

    response = await client.post("/keys/", json={"name": "bad"} | settings, headers=headers)

    assert response.status_code == 422, response.text
    assert isinstance(response.json()["detail"], list)
    assert await database_snapshot(client) == before


@pytest.mark.parametrize("settings", BAD_SETTINGS)
async def test_bad_settings_on_patch_are_422_and_leave_the_key_unchanged(
    client: KeystileClient, settings: dict[str, Any]
) -> None:
    headers = await user_headers(client)
    created = await create_key(client, headers, scopes=["read"], metadata={"a": 1}, ip_allowlist=["127.0.0.1"])
    before = await database_snapshot(client)

    response = await client.patch(f"/keys/{created['id']}", json=settings, headers=headers)

    assert response.status_code == 422, response.text
    assert await database_snapshot(client) == before


@pytest.mark.parametrize(
    ("settings", "stored"),
    [
        pytest.param({"scopes": ["a" * 64]}, {"scopes": ["a" * 64]}, id="scope-64-characters"),
        pytest.param({"scopes": ["a0:._-"]}, {"scopes": ["a0:._-"]}, id="scope-every-allowed-character"),
        pytest.param(
            {"scopes": [f"scope{i}" for i in range(50)]}, {"scopes": [f"scope{i}" for i in range(50)]}, id="50-scopes"
        ),
        pytest.param(
            {"metadata": {"blob": "x" * 4085}}, {"key_metadata": {"blob": "x" * 4085}}, id="metadata-exactly-4-kib"
        ),
        pytest.param(
            {"ip_allowlist": ["10.1.2.3/8", "2001:db8::1/32"]},
            {"ip_allowlist": ["10.0.0.0/8", "2001:db8::/32"]},
            id="cidr-with-host-bits-normalized",
        ),
    ],
)
async def test_settings_at_the_limits_are_accepted(
    client: KeystileClient, settings: dict[str, Any], stored: dict[str, Any]
) -> None:
    headers = await user_headers(client)

    created = await create_key(client, headers, **settings)

    row = await stored_key(client, created["id"])
    assert {name: getattr(row, name) for name in stored} == stored


@pytest.mark.parametrize(
    "offset",
    [pytest.param(-3600, id="an-hour-ago"), pytest.param(-1, id="a-second-ago"), pytest.param(0, id="now")],
)
async def test_expires_at_not_in_the_future_is_422_at_creation(
    client: KeystileClient, clock: FakeClock, offset: int
) -> None:
    headers = await user_headers(client)
    before = await database_snapshot(client)
    expires_at = (clock.now + timedelta(seconds=offset)).isoformat()

    response = await client.post("/keys/", json={"name": "k", "expires_at": expires_at}, headers=headers)

    assert response.status_code == 422, response.text
    assert response.json()["detail"][0]["loc"] == ["body", "expires_at"]
    assert await database_snapshot(client) == before


@pytest.mark.parametrize(
    "offset",
    [pytest.param(-3600, id="an-hour-ago"), pytest.param(-1, id="a-second-ago"), pytest.param(0, id="now")],
)
async def test_expires_at_not_in_the_future_is_422_on_patch(
    client: KeystileClient, clock: FakeClock, offset: int
) -> None:
    headers = await user_headers(client)
    created = await create_key(client, headers, expires_in=600)
    clock.advance(60)
    before = await database_snapshot(client)
    expires_at = (clock.now + timedelta(seconds=offset)).isoformat()

    response = await client.patch(
        f"/keys/{created['id']}", json={"name": "renamed", "expires_at": expires_at}, headers=headers
    )

    assert response.status_code == 422, response.text
    assert response.json()["detail"][0]["loc"] == ["body", "expires_at"]
    assert await database_snapshot(client) == before


@pytest.mark.parametrize(
    "body",
    [
        pytest.param({"expires_at": "2999-01-01T00:00:00"}, id="naive-datetime"),
        pytest.param({"expires_at": "tomorrow"}, id="not-a-datetime"),
        pytest.param({"expires_at": "2999-01-01T00:00:00Z", "expires_in": 60}, id="both-expiries"),
        pytest.param({"name": None}, id="null-name"),
        pytest.param({"scopes": None}, id="null-scopes"),
        pytest.param({"metadata": None}, id="null-metadata"),
        pytest.param({"ip_allowlist": None}, id="null-allowlist"),
        pytest.param({"expires_in": None}, id="null-expires-in"),
        pytest.param({"is_active": True}, id="unknown-is-active"),
        pytest.param({"owner_id": 999}, id="unknown-owner-id"),
        pytest.param({"key_hash": "0" * 64}, id="unknown-key-hash"),
        pytest.param({"rotated_from": 1}, id="unknown-rotated-from"),
    ],
)
async def test_other_bad_patches_are_422_and_leave_the_key_unchanged(
    client: KeystileClient, body: dict[str, Any]
) -> None:
    headers = await user_headers(client)
    created = await create_key(client, headers, expires_in=600, scopes=["read"])
    before = await database_snapshot(client)

    response = await client.patch(f"/keys/{created['id']}", json=body, headers=headers)

    assert response.status_code == 422, response.text
    assert await database_snapshot(client) == before


@pytest.mark.parametrize(
    "body",
    [
        pytest.param({"grace_seconds": -1}, id="negative"),
        pytest.param({"grace_seconds": 604_801}, id="over-a-week"),
        pytest.param({"grace_seconds": 1.5}, id="fractional"),
        pytest.param({"grace_seconds": "sixty"}, id="text"),
        pytest.param({"grace_seconds": None}, id="null"),
        pytest.param({"grace": 60}, id="unknown-field"),
    ],
)
async def test_bad_grace_seconds_is_422_and_rotates_nothing(client: KeystileClient, body: dict[str, Any]) -> None:
    headers = await user_headers(client)
    created = await create_key(client, headers)
    before = await database_snapshot(client)

    response = await client.post(f"/keys/{created['id']}/rotate", json=body, headers=headers)

    assert response.status_code == 422, response.text
    assert await database_snapshot(client) == before
    assert (await client.get("/data/export", headers={"X-API-Key": created["key"]})).status_code == 200


async def test_grace_of_exactly_a_week_is_accepted(client: KeystileClient, clock: FakeClock) -> None:
    headers = await user_headers(client)
    created = await create_key(client, headers)

    response = await client.post(f"/keys/{created['id']}/rotate", json={"grace_seconds": 604_800}, headers=headers)

    assert response.status_code == 201, response.text
    assert (await stored_key(client, created["id"])).expires_at == clock.now + timedelta(seconds=604_800)
