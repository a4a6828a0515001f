"""Stale keys: `GET /keys/?unused_for_days=N` and the same on `/admin/keys` list keys nobody has used for N days, a
key never used counting from its creation."""

from __future__ import annotations

import pytest

from keystile.clock import FakeClock
from tests.helpers import EXPORT, KeystileClient, admin_headers, create_key, key_header, login, user_headers

pytestmark = pytest.mark.no_timer_flush  # the use below stays buffered: the listing must still see it

DAY = 86_400


async def test_unused_for_days_lists_keys_unused_that_long_counting_never_used_keys_from_creation(
    client: KeystileClient, clock: FakeClock
) -> None:
    headers = await user_headers(client)
    never_used = await create_key(client, headers, name="never-used")
    used_lately = await create_key(client, headers, name="used-lately")
    clock.advance(9 * DAY)
    assert (await client.get(EXPORT, headers=key_header(used_lately))).status_code == 200
    headers = await login(client)  # tokens last minutes; the clock moved days
    created_lately = await create_key(client, headers, name="created-lately")
    clock.advance(1 * DAY)
    headers = await login(client)

    def names(response_json: list[dict[str, object]]) -> list[object]:
        return [key["name"] for key in response_json]

    five = await client.get("/keys/", params={"unused_for_days": 5}, headers=headers)
    ten = await client.get("/keys/", params={"unused_for_days": 10}, headers=headers)
    eleven = await client.get("/keys/", params={"unused_for_days": 11}, headers=headers)
    everything = await client.get("/keys/", headers=headers)

    assert names(five.json()) == ["never-used"]
    assert names(ten.json()) == ["never-used"]  # exactly ten days counts
    assert names(eleven.json()) == []
    assert names(everything.json()) == ["created-lately", "used-lately", "never-used"]
    assert {never_used["id"], used_lately["id"], created_lately["id"]} == {key["id"] for key in everything.json()}


async def test_admins_filter_every_owners_keys_the_same_way(client: KeystileClient, clock: FakeClock) -> None:
    alice = await user_headers(client)
    bob = await user_headers(client, "bob@example.com")
    admin = await admin_headers(client)
    await create_key(client, alice, name="alice-old")
    await create_key(client, bob, name="bob-old")
    clock.advance(30 * DAY)
    await create_key(client, await login(client, "bob@example.com"), name="bob-new")
    admin = await login(client, "admin@example.com")

    response = await client.get("/admin/keys", params={"unused_for_days": 30}, headers=admin)

    assert response.status_code == 200
    assert [key["name"] for key in response.json()] == ["bob-old", "alice-old"]


@pytest.mark.parametrize("value", ["0", "-1", "3651", "ten", "1.5", ""])
async def test_an_unused_for_days_outside_1_to_3650_is_422(client: KeystileClient, value: str) -> None:
    headers = await user_headers(client)

    response = await client.get("/keys/", params={"unused_for_days": value}, headers=headers)

    assert response.status_code == 422
