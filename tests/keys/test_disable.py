"""Disable and enable (API.md section 8): a paused key is refused like any invalid key, told apart only after its
secret matched (verify code DISABLED), resumes when enabled, on every instance at once; revocation stays final."""

from __future__ import annotations

import pytest

from tests.conftest import MakeClient
from tests.helpers import EXPORT, KeystileClient, admin_headers, create_key, key_header, user_headers, with_checksum


async def test_a_disabled_key_is_401_on_routes_and_disabled_on_verify_until_enabled(client: KeystileClient) -> None:
    admin = await admin_headers(client)
    headers = await user_headers(client)
    key = await create_key(client, headers)
    assert key["enabled"] is True

    disabled = await client.patch(f"/keys/{key['id']}", json={"enabled": False}, headers=headers)
    refused = await client.get(EXPORT, headers=key_header(key))
    verified = await client.post("/v1/keys/verify", json={"key": key["key"]}, headers=admin)
    body = key["key"][:-6]  # the checksum is the last 6 characters
    guessed_key = with_checksum(body[:-1] + ("A" if body[-1] != "A" else "B"))  # well formed, wrong secret
    guessed = await client.post("/v1/keys/verify", json={"key": guessed_key}, headers=admin)
    enabled = await client.patch(f"/keys/{key['id']}", json={"enabled": True}, headers=headers)
    resumed = await client.get(EXPORT, headers=key_header(key))

    assert (disabled.status_code, disabled.json()["enabled"], disabled.json()["is_active"]) == (200, False, True)
    assert refused.status_code == 401
    assert refused.json() == {"detail": "Invalid or expired API key"}
    assert refused.headers["WWW-Authenticate"] == "APIKey"
    assert (verified.json()["valid"], verified.json()["code"]) == (False, "DISABLED")
    assert guessed.json()["code"] == "NOT_FOUND"
    assert (enabled.json()["enabled"], resumed.status_code) == (True, 200)


async def test_disable_and_enable_are_audited_as_such(client: KeystileClient) -> None:
    headers = await user_headers(client)
    key = await create_key(client, headers)

    await client.patch(f"/keys/{key['id']}", json={"enabled": False}, headers=headers)
    await client.patch(f"/keys/{key['id']}", json={"enabled": False}, headers=headers)  # no change: no event
    await client.patch(f"/keys/{key['id']}", json={"enabled": True, "name": "renamed"}, headers=headers)
    actions = [event["action"] for event in (await client.get("/audit", headers=headers)).json()]

    assert actions[:3] == ["key.updated", "key.enabled", "key.disabled"]
    assert actions.count("key.disabled") == 1


async def test_a_revoked_key_cannot_be_enabled(client: KeystileClient) -> None:
    headers = await user_headers(client)
    key = await create_key(client, headers)
    await client.post(f"/keys/{key['id']}/revoke", headers=headers)

    answer = await client.patch(f"/keys/{key['id']}", json={"enabled": True}, headers=headers)
    shown = await client.get(f"/keys/{key['id']}", headers=headers)

    assert answer.status_code == 409
    assert (shown.json()["is_active"], (await client.get(EXPORT, headers=key_header(key))).status_code) == (False, 401)


@pytest.mark.parametrize("value", [None, "no", 0, "false"])
async def test_enabled_must_be_a_boolean(client: KeystileClient, value: object) -> None:
    headers = await user_headers(client)
    key = await create_key(client, headers)

    answer = await client.patch(f"/keys/{key['id']}", json={"enabled": value}, headers=headers)

    assert answer.status_code == 422
    assert (await client.get(f"/keys/{key['id']}", headers=headers)).json()["enabled"] is True


async def test_the_usage_history_counts_a_disabled_keys_attempts_as_rejected(client: KeystileClient) -> None:
    headers = await user_headers(client)
    key = await create_key(client, headers)
    await client.patch(f"/keys/{key['id']}", json={"enabled": False}, headers=headers)

    await client.get(EXPORT, headers=key_header(key))
    usage = await client.get(f"/keys/{key['id']}/usage", headers=headers)

    assert usage.status_code == 200, usage.text
    assert sum(bucket["rejected"] for bucket in usage.json()["buckets"]) == 1
    assert sum(bucket["valid"] for bucket in usage.json()["buckets"]) == 0


@pytest.mark.redis
async def test_disabling_reaches_another_instance_at_once(make_client: MakeClient, redis_url: str) -> None:
    one = await make_client(redis_url=redis_url)
    other = await make_client(redis_url=redis_url)
    await other.keystile.invalidator.subscribed.wait()
    headers = await user_headers(one)
    key = await create_key(one, headers)
    assert (await other.get(EXPORT, headers=key_header(key))).status_code == 200  # cached there

    await one.patch(f"/keys/{key['id']}", json={"enabled": False}, headers=headers)
    assert await other.keystile.invalidator.caught_up()

    assert (await other.get(EXPORT, headers=key_header(key))).status_code == 401
