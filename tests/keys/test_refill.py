"""Quota refill (API.md section 8, docs/RATE_LIMITS.md "Refill"): at each UTC day or calendar-month boundary the
balance becomes `amount` again, once, with nothing carried over, also for units leased by processes at the boundary.
The boundaries are crossed with the injected clock."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from keystile.clock import FakeClock
from tests.conftest import MakeClient
from tests.helpers import EXPORT, KeystileClient, create_key, key_header, login, stored_quota, user_headers
from tests.identities.test_identities_api import create_identity


async def statuses(client: KeystileClient, key: dict[str, object], count: int) -> list[int]:
    return [(await client.get(EXPORT, headers=key_header(key))).status_code for _ in range(count)]


async def test_a_daily_refill_resets_the_balance_at_midnight_utc(client: KeystileClient, clock: FakeClock) -> None:
    clock.now = datetime(2030, 3, 10, 23, 59, 0, tzinfo=UTC)
    headers = await user_headers(client)
    key = await create_key(client, headers, quota=1, quota_refill={"amount": 3, "interval": "daily"})

    before = await statuses(client, key, 2)
    clock.now = datetime(2030, 3, 11, 0, 0, 0, tzinfo=UTC)
    after = await statuses(client, key, 4)
    shown = (await client.get(f"/keys/{key['id']}", headers=headers)).json()

    assert key["quota_remaining"] == 1  # `quota` given: this period starts there
    assert key["quota_refill"] == {"amount": 3, "interval": "daily"}
    assert before == [200, 429]
    assert after == [200, 200, 200, 429]  # reset to 3, not 3 + what was left
    assert (shown["quota_remaining"], shown["quota_refilled_at"]) == (0, "2030-03-11T00:00:00Z")


@pytest.mark.parametrize(
    ("last_day", "first_of_next"),
    [
        (datetime(2030, 1, 31, 12, tzinfo=UTC), datetime(2030, 2, 1, tzinfo=UTC)),
        (datetime(2028, 2, 29, 23, 59, 59, tzinfo=UTC), datetime(2028, 3, 1, tzinfo=UTC)),  # a leap-year February
        (datetime(2030, 12, 31, 23, tzinfo=UTC), datetime(2031, 1, 1, tzinfo=UTC)),
    ],
)
async def test_a_monthly_refill_resets_on_the_first_of_each_month(
    client: KeystileClient, clock: FakeClock, last_day: datetime, first_of_next: datetime
) -> None:
    clock.now = last_day.replace(day=1, hour=0, minute=0, second=0)
    headers = await user_headers(client)
    key = await create_key(client, headers, quota_refill={"amount": 2, "interval": "monthly"})

    early = await statuses(client, key, 3)
    clock.now = last_day
    late = await statuses(client, key, 1)
    clock.now = first_of_next
    next_month = await statuses(client, key, 3)

    assert key["quota_remaining"] == 2  # without `quota`, it starts at `amount`
    assert (early, late, next_month) == ([200, 200, 429], [429], [200, 200, 429])


async def test_an_unused_quota_shows_as_refilled_after_the_boundary(client: KeystileClient, clock: FakeClock) -> None:
    clock.now = datetime(2030, 5, 1, 8, tzinfo=UTC)
    headers = await user_headers(client)
    key = await create_key(client, headers, quota=0, quota_refill={"amount": 50, "interval": "daily"})

    clock.now = datetime(2030, 5, 2, 8, tzinfo=UTC)
    shown = (await client.get(f"/keys/{key['id']}", headers=await login(client))).json()  # a day on: a new token

    assert (shown["quota_remaining"], shown["quota_refilled_at"]) == (50, "2030-05-02T00:00:00Z")
    assert await stored_quota(client, key["id"]) == 0  # applied by the next use, once


async def test_leases_held_by_two_processes_at_the_boundary_are_void_and_the_new_period_is_exact(
    make_client: MakeClient, clock: FakeClock
) -> None:
    clock.now = datetime(2030, 7, 1, 23, 30, tzinfo=UTC)
    first = await make_client()
    second = await make_client()
    headers = await user_headers(first)
    key = await create_key(first, headers, quota_refill={"amount": 100, "interval": "daily"})
    assert await statuses(first, key, 1) == [200]  # each process now holds a lease of this day's units
    assert await statuses(second, key, 1) == [200]

    clock.now = datetime(2030, 7, 2, 0, 0, 1, tzinfo=UTC)
    admitted = 0
    for i in range(150):
        process = first if i % 2 else second
        admitted += (await process.get(EXPORT, headers=key_header(key))).status_code == 200
    await first.keystile.quotas.release_all()
    await second.keystile.quotas.release_all()

    assert admitted == 100  # exactly the new day's amount: nothing of the old leases carried over
    assert await stored_quota(first, key["id"]) == 0


async def test_a_lease_returned_at_shutdown_goes_back_to_its_own_period_only(
    make_client: MakeClient, clock: FakeClock
) -> None:
    clock.now = datetime(2030, 7, 1, 12, tzinfo=UTC)
    client = await make_client()
    headers = await user_headers(client)
    key = await create_key(client, headers, quota_refill={"amount": 100, "interval": "daily"})
    await statuses(client, key, 1)

    await client.keystile.quotas.release_all()  # same day: the unspent lease goes back
    assert await stored_quota(client, key["id"]) == 99
    await statuses(client, key, 1)  # a new lease, in this day
    clock.now = datetime(2030, 7, 2, 0, 5, tzinfo=UTC)
    other = await make_client()
    await statuses(other, key, 1)  # the new day begins in another process: refilled to 100, one spent
    await client.keystile.quotas.release_all()  # yesterday's lease: owed to nobody now

    assert await stored_quota(client, key["id"]) < 100
    await other.keystile.quotas.release_all()
    assert await stored_quota(client, key["id"]) == 99


async def test_an_identity_quota_refills_too(client: KeystileClient, clock: FakeClock) -> None:
    clock.now = datetime(2030, 8, 31, 22, tzinfo=UTC)
    headers = await user_headers(client)
    identity = await create_identity(client, headers, quota_refill={"amount": 2, "interval": "monthly"})
    key = await create_key(client, headers, identity_id=identity["id"])

    before = await statuses(client, key, 3)
    clock.now = datetime(2030, 9, 1, tzinfo=UTC)
    after = await statuses(client, key, 3)

    assert (identity["quota_remaining"], before, after) == (2, [200, 200, 429], [200, 200, 429])


async def test_refill_settings_can_be_changed_and_cleared(client: KeystileClient, clock: FakeClock) -> None:
    headers = await user_headers(client)
    key = await create_key(client, headers, quota=5)

    set_refill = await client.patch(
        f"/keys/{key['id']}", json={"quota_refill": {"amount": 7, "interval": "daily"}}, headers=headers
    )
    cleared = await client.patch(f"/keys/{key['id']}", json={"quota_refill": None}, headers=headers)

    assert (set_refill.json()["quota_remaining"], set_refill.json()["quota_refill"]) == (
        7,
        {"amount": 7, "interval": "daily"},
    )
    assert (cleared.json()["quota_remaining"], cleared.json()["quota_refill"], cleared.json()["quota_refilled_at"]) == (
        7,
        None,
        None,
    )


@pytest.mark.parametrize(
    "refill",
    [
        {"amount": 0, "interval": "daily"},
        {"amount": 5, "interval": "weekly"},
        {"amount": 5},
        "daily",
        {"amount": 1.5, "interval": "daily"},
    ],
)
async def test_bad_refills_are_422_and_store_nothing(client: KeystileClient, refill: object) -> None:
    headers = await user_headers(client)
    key = await create_key(client, headers, quota=5)

    created = await client.post("/keys/", json={"name": "x", "quota_refill": refill}, headers=headers)
    patched = await client.patch(f"/keys/{key['id']}", json={"quota_refill": refill}, headers=headers)

    assert (created.status_code, patched.status_code) == (422, 422)
    assert [k["id"] for k in (await client.get("/keys/", headers=headers)).json()] == [key["id"]]
    assert (await client.get(f"/keys/{key['id']}", headers=headers)).json()["quota_refill"] is None
