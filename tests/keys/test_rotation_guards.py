"""A rotated key cannot outlive its grace or leave the shared quota through PATCH."""

from __future__ import annotations

from datetime import timedelta

import pytest

from keystile.clock import FakeClock
from tests.helpers import KeystileClient, create_key, stored_key, user_headers


@pytest.mark.parametrize(
    "change",
    [
        pytest.param({"expires_at": None}, id="clear-expiry"),
        pytest.param({"expires_in": 86_400}, id="extend-expiry"),
        pytest.param({"quota": 1000}, id="own-quota"),
    ],
)
async def test_patching_expiry_or_quota_of_a_rotated_key_is_409_and_changes_nothing(
    client: KeystileClient, clock: FakeClock, change: dict[str, object]
) -> None:
    headers = await user_headers(client)
    old = await create_key(client, headers, quota=10)
    rotated = await client.post(f"/keys/{old['id']}/rotate", json={"grace_seconds": 60}, headers=headers)
    assert rotated.status_code == 201
    before = await stored_key(client, old["id"])

    response = await client.patch(f"/keys/{old['id']}", json=change, headers=headers)

    assert response.status_code == 409
    assert response.json() == {"detail": "this key was rotated: its expiry and quota follow the rotation"}
    after = await stored_key(client, old["id"])
    assert after.expires_at == before.expires_at == clock() + timedelta(seconds=60)
    assert after.quota_holder_id == before.quota_holder_id == rotated.json()["id"]
    assert after.quota_remaining is None


async def test_a_rotated_key_can_still_be_renamed(client: KeystileClient) -> None:
    headers = await user_headers(client)
    old = await create_key(client, headers)
    assert (await client.post(f"/keys/{old['id']}/rotate", json={"grace_seconds": 60}, headers=headers)).is_success

    response = await client.patch(f"/keys/{old['id']}", json={"name": "retiring"}, headers=headers)

    assert response.status_code == 200
    assert (await stored_key(client, old["id"])).name == "retiring"
