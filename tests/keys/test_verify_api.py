"""`POST /v1/keys/verify` (API.md section 3): every code by a real scenario, its caller rules, its bad input."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import pytest

from keystile.clock import FakeClock
from keystile.keys import format as key_format
from tests.helpers import (
    VERIFY_FIELDS,
    KeystileClient,
    admin_headers,
    create_key,
    database_snapshot,
    login,
    parse_time,
    register,
    stored_key,
    user_headers,
    verify,
)

NOT_FOUND = {field: None for field in VERIFY_FIELDS} | {"valid": False, "code": "NOT_FOUND"}


def with_wrong_secret(raw: str) -> str:
    """The same prefix and key_id with another secret and a correct checksum: well-formed, but not the key."""
    body = raw[: -key_format.CHECKSUM_LENGTH]
    changed = body[:-1] + ("A" if body[-1] != "A" else "B")
    wrong = changed + key_format.checksum(changed)
    assert key_format.key_id_of(wrong, "ks") is not None
    return wrong


def seconds_to_window_end(now: datetime, window_seconds: int) -> int:
    return window_seconds - int(now.timestamp()) % window_seconds


# VALID


async def test_valid_key_returns_every_field_of_the_contract(client: KeystileClient, clock: FakeClock) -> None:
    admin = await admin_headers(client)
    owner = await register(client, "alice@example.com")
    alice = await login(client, "alice@example.com")
    created = await create_key(
        client,
        alice,
        name="gateway",
        scopes=["write", "read"],
        expires_in=3600,
        rate_limit={"limit": 5, "window_seconds": 60},
        quota=10,
        metadata={"team": "payments", "tier": 2},
    )

    body = await verify(client, admin, created["key"], scopes=["read"])

    assert body == {
        "valid": True,
        "code": "VALID",
        "api_key_id": created["id"],
        "owner_id": owner["id"],
        "name": "gateway",
        "scopes": ["read", "write"],
        "metadata": {"team": "payments", "tier": 2},
        "expires_at": created["expires_at"],
        "ratelimit": {"limit": 5, "remaining": 4, "reset_seconds": seconds_to_window_end(clock.now, 60)},
        "quota_remaining": 9,
        "identity": None,
    }
    assert (parse_time(body["expires_at"]) - clock.now).total_seconds() == 3600
    await client.keystile.usage.flush()
    await client.keystile.quotas.release_all()
    row = await stored_key(client, created["id"])
    assert row.use_count == 1
    assert row.last_used_at == clock.now
    assert row.quota_remaining == 9


async def test_valid_key_without_limits_has_null_ratelimit_and_quota(client: KeystileClient) -> None:
    admin = await admin_headers(client)
    created = await create_key(client, await user_headers(client))

    body = await verify(client, admin, created["key"])

    assert (body["valid"], body["code"]) == (True, "VALID")
    assert body["ratelimit"] is None
    assert body["quota_remaining"] is None
    assert body["scopes"] == []
    assert body["metadata"] == {}
    assert body["expires_at"] is None


# NOT_FOUND


@pytest.mark.parametrize(
    "make_presented",
    [
        pytest.param(lambda raw: "not-a-key", id="garbage"),
        pytest.param(lambda raw: "", id="empty"),
        pytest.param(lambda raw: raw[:-1], id="truncated"),
        pytest.param(lambda raw: raw[:-1] + ("0" if raw[-1] != "0" else "1"), id="wrong-checksum"),
        pytest.param(lambda raw: "x" * 600, id="over-512-characters"),
        pytest.param(lambda raw: key_format.generate_key("ks").raw, id="unknown-key-id"),
        pytest.param(lambda raw: key_format.generate_key("other").raw, id="other-prefix"),
        pytest.param(with_wrong_secret, id="wrong-secret-right-checksum"),
    ],
)
async def test_malformed_unknown_or_wrong_key_is_not_found_with_no_details(
    client: KeystileClient, make_presented: Any
) -> None:
    admin = await admin_headers(client)
    created = await create_key(client, await user_headers(client), rate_limit={"limit": 5, "window_seconds": 60})
    before = await database_snapshot(client)

    body = await verify(client, admin, make_presented(created["key"]))

    assert body == NOT_FOUND
    assert await database_snapshot(client) == before
    untouched = await verify(client, admin, created["key"])
    assert untouched["ratelimit"]["remaining"] == 4


# REVOKED and EXPIRED: told only once the secret matched


async def test_revoked_key_is_revoked_and_a_wrong_secret_for_it_is_not_found(client: KeystileClient) -> None:
    admin = await admin_headers(client)
    alice = await user_headers(client)
    created = await create_key(client, alice, name="old")
    assert (await client.post(f"/keys/{created['id']}/revoke", headers=alice)).status_code == 200

    body = await verify(client, admin, created["key"])
    wrong = await verify(client, admin, with_wrong_secret(created["key"]))

    assert (body["valid"], body["code"]) == (False, "REVOKED")
    assert body["api_key_id"] == created["id"]
    assert body["name"] == "old"
    assert wrong == NOT_FOUND
    assert (await stored_key(client, created["id"])).is_active is False


async def test_key_is_expired_from_its_expiry_instant_on(client: KeystileClient, clock: FakeClock) -> None:
    admin = await admin_headers(client)
    created = await create_key(client, await user_headers(client), expires_in=120)
    clock.advance(119)
    assert (await verify(client, admin, created["key"]))["code"] == "VALID"

    clock.advance(1)
    body = await verify(client, admin, created["key"])
    wrong = await verify(client, admin, with_wrong_secret(created["key"]))

    assert (body["valid"], body["code"]) == (False, "EXPIRED")
    assert body["api_key_id"] == created["id"]
    assert parse_time(body["expires_at"]) == clock.now
    assert wrong == NOT_FOUND


async def test_old_key_past_its_rotation_grace_is_expired(client: KeystileClient, clock: FakeClock) -> None:
    admin = await admin_headers(client)
    alice = await user_headers(client)
    created = await create_key(client, alice)
    rotated = await client.post(f"/keys/{created['id']}/rotate", json={"grace_seconds": 60}, headers=alice)
    assert rotated.status_code == 201, rotated.text
    clock.advance(59)
    inside = await verify(client, admin, created["key"])

    clock.advance(1)
    after = await verify(client, admin, created["key"])

    assert inside["code"] == "VALID"
    assert (after["valid"], after["code"]) == (False, "EXPIRED")
    assert after["api_key_id"] == created["id"]
    new = await verify(client, admin, rotated.json()["key"])
    assert (new["code"], new["api_key_id"]) == ("VALID", rotated.json()["id"])


# INSUFFICIENT_SCOPES


@pytest.mark.parametrize(
    ("required", "code"),
    [
        pytest.param([], "VALID", id="none-required"),
        pytest.param(["read"], "VALID", id="held"),
        pytest.param(["read", "keys:verify"], "VALID", id="all-held"),
        pytest.param(["write"], "INSUFFICIENT_SCOPES", id="missing"),
        pytest.param(["read", "write"], "INSUFFICIENT_SCOPES", id="one-of-two-missing"),
        pytest.param(["Read"], "INSUFFICIENT_SCOPES", id="case-sensitive"),
    ],
)
async def test_required_scopes_must_all_be_held(client: KeystileClient, required: list[str], code: str) -> None:
    admin = await admin_headers(client)
    created = await create_key(client, await user_headers(client), scopes=["read", "keys:verify"])

    body = await verify(client, admin, created["key"], scopes=required)

    assert body["code"] == code
    assert body["valid"] is (code == "VALID")
    assert body["api_key_id"] == created["id"]
    assert body["scopes"] == ["keys:verify", "read"]


# IP_NOT_ALLOWED


@pytest.mark.parametrize(
    ("allowlist", "ip", "code"),
    [
        pytest.param(["10.0.0.0/8"], "10.20.30.40", "VALID", id="ipv4-in-cidr"),
        pytest.param(["10.0.0.0/8"], "192.168.1.1", "IP_NOT_ALLOWED", id="ipv4-outside-cidr"),
        pytest.param(["10.0.0.0/8"], None, "IP_NOT_ALLOWED", id="ip-absent"),
        pytest.param(["203.0.113.7"], "203.0.113.7", "VALID", id="ipv4-exact"),
        pytest.param(["203.0.113.7"], "203.0.113.8", "IP_NOT_ALLOWED", id="ipv4-neighbour"),
        pytest.param(["2001:db8::/32"], "2001:db8:1::5", "VALID", id="ipv6-in-cidr"),
        pytest.param(["2001:db8::/32"], "2001:db9::5", "IP_NOT_ALLOWED", id="ipv6-outside-cidr"),
        pytest.param(["10.0.0.0/8"], "2001:db8::5", "IP_NOT_ALLOWED", id="ipv6-against-ipv4-list"),
        pytest.param([], None, "VALID", id="no-allowlist-no-ip"),
        pytest.param([], "198.51.100.1", "VALID", id="no-allowlist-any-ip"),
    ],
)
async def test_ip_must_be_in_the_allowlist_when_the_key_has_one(
    client: KeystileClient, allowlist: list[str], ip: str | None, code: str
) -> None:
    admin = await admin_headers(client)
    created = await create_key(client, await user_headers(client), ip_allowlist=allowlist)
    fields = {"ip": ip} if ip is not None else {}

    body = await verify(client, admin, created["key"], **fields)

    assert body["code"] == code
    assert body["valid"] is (code == "VALID")
    assert body["api_key_id"] == created["id"]
    await client.keystile.usage.flush()
    assert (await stored_key(client, created["id"])).use_count == (1 if code == "VALID" else 0)


# RATE_LIMITED, QUOTA_EXCEEDED and cost


async def test_third_call_on_a_limit_of_two_is_rate_limited(client: KeystileClient, clock: FakeClock) -> None:
    admin = await admin_headers(client)
    created = await create_key(client, await user_headers(client), rate_limit={"limit": 2, "window_seconds": 60})
    reset = seconds_to_window_end(clock.now, 60)

    answers = [await verify(client, admin, created["key"]) for _ in range(3)]

    assert [answer["code"] for answer in answers] == ["VALID", "VALID", "RATE_LIMITED"]
    assert [answer["valid"] for answer in answers] == [True, True, False]
    assert [answer["ratelimit"] for answer in answers] == [
        {"limit": 2, "remaining": 1, "reset_seconds": reset},
        {"limit": 2, "remaining": 0, "reset_seconds": reset},
        {"limit": 2, "remaining": 0, "reset_seconds": reset},
    ]
    assert answers[2]["api_key_id"] == created["id"]
    await client.keystile.usage.flush()
    assert (await stored_key(client, created["id"])).use_count == 2
    clock.advance(reset)
    assert (await verify(client, admin, created["key"]))["code"] == "VALID"


async def test_third_call_on_a_quota_of_two_is_quota_exceeded(client: KeystileClient) -> None:
    admin = await admin_headers(client)
    created = await create_key(client, await user_headers(client), quota=2)

    answers = [await verify(client, admin, created["key"]) for _ in range(3)]

    assert [answer["code"] for answer in answers] == ["VALID", "VALID", "QUOTA_EXCEEDED"]
    assert [answer["valid"] for answer in answers] == [True, True, False]
    assert [answer["quota_remaining"] for answer in answers] == [1, 0, 0]
    await client.keystile.usage.flush()
    await client.keystile.quotas.release_all()
    row = await stored_key(client, created["id"])
    assert row.quota_remaining == 0
    assert row.use_count == 2


async def test_cost_counts_against_the_rate_limit(client: KeystileClient) -> None:
    admin = await admin_headers(client)
    created = await create_key(client, await user_headers(client), rate_limit={"limit": 3, "window_seconds": 60})

    first = await verify(client, admin, created["key"], cost=2)
    second = await verify(client, admin, created["key"], cost=2)
    third = await verify(client, admin, created["key"], cost=1)
    fourth = await verify(client, admin, created["key"], cost=0)

    assert (first["code"], first["ratelimit"]["remaining"]) == ("VALID", 1)
    assert (second["code"], second["ratelimit"]["remaining"]) == ("RATE_LIMITED", 1)
    assert (third["code"], third["ratelimit"]["remaining"]) == ("VALID", 0)
    assert (fourth["code"], fourth["ratelimit"]["remaining"]) == ("VALID", 0)


async def test_cost_counts_against_the_quota(client: KeystileClient) -> None:
    admin = await admin_headers(client)
    created = await create_key(client, await user_headers(client), quota=3)

    first = await verify(client, admin, created["key"], cost=2)
    second = await verify(client, admin, created["key"], cost=2)
    third = await verify(client, admin, created["key"], cost=1)
    fourth = await verify(client, admin, created["key"], cost=1)

    assert (first["code"], first["quota_remaining"]) == ("VALID", 1)
    assert (second["code"], second["quota_remaining"]) == ("QUOTA_EXCEEDED", 1)  # the real balance, unspent
    assert (third["code"], third["quota_remaining"]) == ("VALID", 0)
    assert (fourth["code"], fourth["quota_remaining"]) == ("QUOTA_EXCEEDED", 0)
    await client.keystile.quotas.release_all()
    assert (await stored_key(client, created["id"])).quota_remaining == 0


async def test_a_cost_larger_than_the_balance_is_refused_and_reports_the_balance_untouched(
    client: KeystileClient,
) -> None:
    admin = await admin_headers(client)
    created = await create_key(client, await user_headers(client), quota=3)

    refused = await verify(client, admin, created["key"], cost=5)
    admitted = await verify(client, admin, created["key"], cost=3)

    assert (refused["valid"], refused["code"], refused["quota_remaining"]) == (False, "QUOTA_EXCEEDED", 3)
    assert (admitted["valid"], admitted["quota_remaining"]) == (True, 0)
    await client.keystile.quotas.release_all()
    assert (await stored_key(client, created["id"])).quota_remaining == 0


async def test_verify_and_protected_routes_draw_from_the_same_rate_limit(client: KeystileClient) -> None:
    admin = await admin_headers(client)
    created = await create_key(client, await user_headers(client), rate_limit={"limit": 2, "window_seconds": 60})
    assert (await client.get("/data/export", headers={"X-API-Key": created["key"]})).status_code == 200

    second = await verify(client, admin, created["key"])
    third = await client.get("/data/export", headers={"X-API-Key": created["key"]})

    assert (second["code"], second["ratelimit"]["remaining"]) == ("VALID", 0)
    assert third.status_code == 429
    assert third.json() == {"detail": "API key rate limit exceeded"}


# Callers


async def test_caller_key_with_keys_verify_scope_may_verify(client: KeystileClient) -> None:
    alice = await user_headers(client)
    caller = await create_key(client, alice, name="gateway", scopes=["keys:verify"])
    target = await create_key(client, alice, name="target")

    body = await verify(client, {"X-API-Key": caller["key"]}, target["key"])

    assert (body["code"], body["api_key_id"], body["name"]) == ("VALID", target["id"], "target")


async def test_a_verifier_key_answers_not_found_for_another_owners_key_and_spends_none_of_it(
    client: KeystileClient,
) -> None:
    mallory = await user_headers(client, "mallory@example.com")
    verifier = await create_key(client, mallory, name="gateway", scopes=["keys:verify"])
    alice = await user_headers(client)
    target = await create_key(client, alice, name="target", quota=5, rate_limit={"limit": 5, "window_seconds": 60})
    unknown = key_format.generate_key("ks").raw

    for_target = await verify(client, {"X-API-Key": verifier["key"]}, target["key"], cost=5)
    for_unknown = await verify(client, {"X-API-Key": verifier["key"]}, unknown)

    assert for_target == for_unknown  # indistinguishable from a key that does not exist
    assert for_target["code"] == "NOT_FOUND"
    assert for_target["api_key_id"] is None
    admin = await admin_headers(client)
    by_admin = await verify(client, admin, target["key"])
    assert (by_admin["code"], by_admin["quota_remaining"], by_admin["ratelimit"]["remaining"]) == ("VALID", 4, 4)
    await client.keystile.usage.flush()
    assert (await stored_key(client, target["id"])).use_count == 1


async def test_a_verifier_key_owned_by_an_admin_verifies_every_owners_keys(client: KeystileClient) -> None:
    admin = await admin_headers(client)
    verifier = await create_key(client, admin, name="gateway", scopes=["keys:verify"])
    target = await create_key(client, await user_headers(client), name="target")

    body = await verify(client, {"X-API-Key": verifier["key"]}, target["key"])

    assert (body["code"], body["api_key_id"]) == ("VALID", target["id"])


async def test_a_caller_with_a_user_jwt_and_a_verifier_key_is_judged_by_the_key(client: KeystileClient) -> None:
    alice = await user_headers(client)
    verifier = await create_key(client, alice, name="gateway", scopes=["keys:verify"])
    target = await create_key(client, alice, name="target")

    body = await verify(client, alice | {"X-API-Key": verifier["key"]}, target["key"])

    assert (body["code"], body["api_key_id"]) == ("VALID", target["id"])


@pytest.mark.parametrize(
    ("caller", "status", "detail"),
    [
        pytest.param("none", 401, "Admin bearer token or API key with scope keys:verify required", id="no-credentials"),
        pytest.param("user-jwt", 403, "Admin privileges or scope keys:verify required", id="non-admin-jwt"),
        pytest.param("key-without-scope", 403, "API key lacks required scope: keys:verify", id="key-without-scope"),
        pytest.param("revoked-key", 401, "Invalid or expired API key", id="revoked-caller-key"),
        pytest.param("garbage-key", 401, "Invalid or expired API key", id="malformed-caller-key"),
        pytest.param("garbage-jwt", 401, "Not authenticated", id="garbage-jwt"),
    ],
)
async def test_verify_refuses_callers_that_are_neither_admin_nor_keys_verify(
    client: KeystileClient, caller: str, status: int, detail: str
) -> None:
    alice = await user_headers(client)
    target = await create_key(client, alice, name="target", rate_limit={"limit": 5, "window_seconds": 60})
    plain = await create_key(client, alice, name="plain", scopes=["read"])
    revoked = await create_key(client, alice, name="revoked", scopes=["keys:verify"])
    assert (await client.post(f"/keys/{revoked['id']}/revoke", headers=alice)).status_code == 200
    headers = {
        "none": {},
        "user-jwt": alice,
        "key-without-scope": {"X-API-Key": plain["key"]},
        "revoked-key": {"X-API-Key": revoked["key"]},
        "garbage-key": {"X-API-Key": "ks_garbage"},
        "garbage-jwt": {"Authorization": "Bearer not-a-jwt"},
    }[caller]
    before = await database_snapshot(client)

    response = await client.post("/v1/keys/verify", json={"key": target["key"]}, headers=headers)

    assert response.status_code == status, response.text
    assert response.json() == {"detail": detail}
    assert await database_snapshot(client) == before
    admin = await admin_headers(client)
    assert (await verify(client, admin, target["key"]))["ratelimit"]["remaining"] == 4


# Bad input


@pytest.mark.parametrize(
    "body",
    [
        pytest.param({"cost": -1}, id="negative-cost"),
        pytest.param({"cost": 1_000_001}, id="huge-cost"),
        pytest.param({"cost": 10**30}, id="enormous-cost"),
        pytest.param({"cost": 1.5}, id="fractional-cost"),
        pytest.param({"cost": "two"}, id="text-cost"),
        pytest.param({"ip": "not-an-ip"}, id="ip-not-an-ip"),
        pytest.param({"ip": "10.0.0.0/8"}, id="ip-is-a-cidr"),
        pytest.param({"ip": "999.1.1.1"}, id="ip-out-of-range"),
        pytest.param({"ip": False}, id="ip-false"),
        pytest.param({"ip": 167772161}, id="ip-an-integer"),
        pytest.param({"ip": "fe80::1%eth0"}, id="ip-with-a-zone"),
        pytest.param({"unexpected": True}, id="unknown-field"),
        pytest.param({"scopes": "read"}, id="scopes-not-a-list"),
        pytest.param({"scopes": ["s" * 65]}, id="scope-too-long"),
        pytest.param({"scopes": [f"s{i}" for i in range(51)]}, id="51-scopes"),
        pytest.param({"key": None}, id="key-null"),
        pytest.param({"key": 12345}, id="key-not-a-string"),
        pytest.param({"key": "k" * 4097}, id="key-over-4096-characters"),
        pytest.param({"key": ...}, id="key-missing"),
    ],
)
async def test_bad_verify_input_is_422_and_spends_nothing(client: KeystileClient, body: dict[str, Any]) -> None:
    admin = await admin_headers(client)
    created = await create_key(client, await user_headers(client), rate_limit={"limit": 2, "window_seconds": 60})
    payload = {"key": created["key"]} | body
    payload = {name: value for name, value in payload.items() if value is not ...}
    before = await database_snapshot(client)

    response = await client.post("/v1/keys/verify", json=payload, headers=admin)

    assert response.status_code == 422, response.text
    assert isinstance(response.json()["detail"], list)
    assert await database_snapshot(client) == before
    assert (await verify(client, admin, created["key"]))["ratelimit"]["remaining"] == 1
