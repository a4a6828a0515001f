"""`GET /keys/{id}/usage` and `GET /identities/{id}/usage` (API.md section 8): zero-filled UTC buckets of verifications
by outcome, owner-scoped, with the window's limits enforced as 422s and retention enforced by the running service."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from keystile.clock import FakeClock
from keystile.usage.models import KeyUsageHour
from tests.conftest import MakeClient
from tests.helpers import (
    EXPORT,
    KeystileClient,
    admin_headers,
    create_key,
    key_header,
    login,
    parse_time,
    recorded_statements,
    user_headers,
    verify,
    wrong_checksum,
)

pytestmark = pytest.mark.no_timer_flush  # counts are written when a route reads them, never by the timer

HOUR = timedelta(hours=1)
DAY = timedelta(days=1)
PLUS_TWO = timezone(timedelta(hours=2))
ZERO = {"valid": 0, "rate_limited": 0, "quota_exceeded": 0, "rejected": 0}


def hour_of(at: datetime) -> datetime:
    return at.replace(minute=0, second=0, microsecond=0)


def half_past_next_hour(clock: FakeClock) -> datetime:
    """Move the clock to hh:30 of the next hour, so a test's uses share one hour; return that hour's start."""
    start = hour_of(clock.now) + HOUR
    clock.advance((start + timedelta(minutes=30) - clock.now).total_seconds())
    return start


def midnight_after(clock: FakeClock) -> datetime:
    """Move the clock to the next UTC midnight; return it."""
    start = clock.now.replace(hour=0, minute=0, second=0, microsecond=0) + DAY
    clock.advance((start - clock.now).total_seconds())
    return start


async def use(client: httpx.AsyncClient, created: dict[str, Any], times: int = 1) -> list[int]:
    return [(await client.get(EXPORT, headers=key_header(created))).status_code for _ in range(times)]


async def usage(client: httpx.AsyncClient, headers: dict[str, str], path: str, **params: Any) -> httpx.Response:
    query = {name: value.isoformat() if isinstance(value, datetime) else value for name, value in params.items()}
    return await client.get(f"{path}/usage", params=query, headers=headers)


def counted(body: dict[str, Any]) -> dict[datetime, dict[str, int]]:
    """The buckets that counted anything, by start."""
    buckets = {parse_time(bucket.pop("start")): bucket for bucket in body["buckets"]}
    return {start: counts for start, counts in buckets.items() if counts != ZERO}


def starts(body: dict[str, Any]) -> list[datetime]:
    return [parse_time(bucket["start"]) for bucket in body["buckets"]]


async def stored_hours(client: KeystileClient, api_key_id: int) -> dict[datetime, tuple[int, int, int, int]]:
    async with client.keystile.session_factory() as session:
        rows = await session.scalars(select(KeyUsageHour).where(KeyUsageHour.api_key_id == api_key_id))
        return {row.hour: (row.valid, row.rate_limited, row.quota_exceeded, row.rejected) for row in rows}


# Windows


async def test_a_new_key_has_the_last_24_hours_zero_filled_ending_with_the_current_one(
    client: KeystileClient, clock: FakeClock
) -> None:
    headers = await user_headers(client)
    created = await create_key(client, headers)

    response = await usage(client, headers, f"/keys/{created['id']}")

    assert response.status_code == 200, response.text
    body = response.json()
    assert body["interval"] == "hour"
    current = hour_of(clock.now)
    assert starts(body) == [current - index * HOUR for index in range(23, -1, -1)]
    assert all({name: count for name, count in bucket.items() if name != "start"} == ZERO for bucket in body["buckets"])
    assert await stored_hours(client, created["id"]) == {}


async def test_the_day_interval_defaults_to_the_last_30_days(client: KeystileClient, clock: FakeClock) -> None:
    headers = await user_headers(client)
    created = await create_key(client, headers)

    response = await usage(client, headers, f"/keys/{created['id']}", interval="day")

    assert response.status_code == 200, response.text
    today = clock.now.replace(hour=0, minute=0, second=0, microsecond=0)
    assert response.json()["interval"] == "day"
    assert starts(response.json()) == [today - index * DAY for index in range(29, -1, -1)]


async def test_uses_are_counted_in_their_hour_and_a_day_is_the_sum_of_its_hours(
    client: KeystileClient, clock: FakeClock
) -> None:
    headers = await user_headers(client)
    created = await create_key(client, headers)
    day = midnight_after(clock)
    clock.advance(3600 + 60)  # 01:01
    assert await use(client, created, 3) == [200] * 3
    clock.advance(4 * 3600)  # 05:01
    assert await use(client, created, 2) == [200] * 2
    clock.advance(24 * 3600)  # the next day, 05:01
    assert await use(client, created) == [200]
    headers = await login(client)

    hours = await usage(client, headers, f"/keys/{created['id']}", since=day, until=day + 2 * DAY)
    days = await usage(client, headers, f"/keys/{created['id']}", interval="day", since=day, until=day + 2 * DAY)

    assert hours.status_code == 200, hours.text
    assert len(hours.json()["buckets"]) == 48
    assert counted(hours.json()) == {
        day + 1 * HOUR: ZERO | {"valid": 3},
        day + 5 * HOUR: ZERO | {"valid": 2},
        day + DAY + 5 * HOUR: ZERO | {"valid": 1},
    }
    assert days.status_code == 200, days.text
    assert starts(days.json()) == [day, day + DAY]
    assert counted(days.json()) == {day: ZERO | {"valid": 5}, day + DAY: ZERO | {"valid": 1}}
    assert await stored_hours(client, created["id"]) == {
        day + 1 * HOUR: (3, 0, 0, 0),
        day + 5 * HOUR: (2, 0, 0, 0),
        day + DAY + 5 * HOUR: (1, 0, 0, 0),
    }


async def test_since_is_floored_and_until_rounded_up_to_bucket_boundaries(
    client: KeystileClient, clock: FakeClock
) -> None:
    headers = await user_headers(client)
    created = await create_key(client, headers)
    start = hour_of(clock.now) - 10 * HOUR

    hours = await usage(
        client,
        headers,
        f"/keys/{created['id']}",
        since=start + timedelta(minutes=30),
        until=start + 2 * HOUR + HOUR / 6,
    )
    exact = await usage(client, headers, f"/keys/{created['id']}", since=start, until=start + 2 * HOUR)
    days = await usage(client, headers, f"/keys/{created['id']}", interval="day", since=start, until=start)

    assert starts(hours.json()) == [start, start + HOUR, start + 2 * HOUR]
    assert starts(exact.json()) == [start, start + HOUR]  # until is exclusive
    assert starts(days.json()) == [start.replace(hour=0)]


async def test_a_time_without_an_offset_is_taken_as_utc(client: KeystileClient, clock: FakeClock) -> None:
    headers = await user_headers(client)
    created = await create_key(client, headers)
    start = hour_of(clock.now) - 5 * HOUR
    naive = start.replace(tzinfo=None)

    as_utc = await usage(client, headers, f"/keys/{created['id']}", since=start, until=start + 3 * HOUR)
    without_offset = await usage(client, headers, f"/keys/{created['id']}", since=naive, until=naive + 3 * HOUR)
    other_offset = await usage(
        client,
        headers,
        f"/keys/{created['id']}",
        since=start.astimezone(PLUS_TWO),
        until=(start + 3 * HOUR).astimezone(PLUS_TWO),
    )

    assert without_offset.status_code == 200, without_offset.text
    assert without_offset.json() == as_utc.json() == other_offset.json()
    assert starts(as_utc.json()) == [start, start + HOUR, start + 2 * HOUR]


# Outcomes


async def test_each_outcome_after_the_secret_matched_is_counted_in_its_category(
    client: KeystileClient, clock: FakeClock
) -> None:
    hour = half_past_next_hour(clock)
    headers = await user_headers(client)
    verifier = await create_key(client, headers, name="verifier", scopes=["keys:verify"])
    caller = key_header(verifier)
    plain = await create_key(client, headers, name="plain", scopes=["read"])
    limited = await create_key(client, headers, name="limited", rate_limit={"limit": 2, "window_seconds": 3600})
    quota = await create_key(client, headers, name="quota", quota=1)
    revoked = await create_key(client, headers, name="revoked")
    expiring = await create_key(client, headers, name="expiring", expires_in=60)

    assert await use(client, plain, 2) == [200, 200]
    assert (await verify(client, caller, plain["key"], scopes=["read"]))["code"] == "VALID"
    assert (await verify(client, caller, plain["key"], scopes=["write"]))["code"] == "INSUFFICIENT_SCOPES"
    assert (await verify(client, caller, wrong_checksum(plain["key"])))["code"] == "NOT_FOUND"  # not counted
    assert await use(client, limited, 4) == [200, 200, 429, 429]
    assert (await verify(client, caller, limited["key"]))["code"] == "RATE_LIMITED"
    assert await use(client, quota, 3) == [200, 429, 429]
    assert (await client.post(f"/keys/{revoked['id']}/revoke", headers=headers)).status_code == 200
    assert await use(client, revoked, 2) == [401, 401]
    assert (await verify(client, caller, revoked["key"]))["code"] == "REVOKED"
    assert await use(client, expiring) == [200]
    clock.advance(120)
    assert await use(client, expiring) == [401]

    expected = {
        "plain": ZERO | {"valid": 3, "rejected": 1},
        "limited": ZERO | {"valid": 2, "rate_limited": 3},
        "quota": ZERO | {"valid": 1, "quota_exceeded": 2},
        "revoked": ZERO | {"rejected": 3},
        "expiring": ZERO | {"valid": 1, "rejected": 1},
        "verifier": ZERO | {"valid": 5},  # the caller key of the five verify calls
    }
    keys = {
        "plain": plain,
        "limited": limited,
        "quota": quota,
        "revoked": revoked,
        "expiring": expiring,
        "verifier": verifier,
    }
    for name, created in keys.items():
        response = await usage(client, headers, f"/keys/{created['id']}", since=hour, until=hour + HOUR)
        assert response.status_code == 200, response.text
        assert response.json()["buckets"] == [{"start": hour.isoformat().replace("+00:00", "Z")} | expected[name]]
        assert await stored_hours(client, created["id"]) == {hour: tuple(expected[name].values())}, name
    assert (await client.get(f"/keys/{plain['id']}", headers=headers)).json()["use_count"] == 3


async def test_a_disabled_key_is_counted_as_rejected(client: KeystileClient, clock: FakeClock) -> None:
    hour = half_past_next_hour(clock)
    headers = await user_headers(client)
    caller = key_header(await create_key(client, headers, name="verifier", scopes=["keys:verify"]))
    disabled = await create_key(client, headers, name="disabled")
    assert await use(client, disabled) == [200]

    pause = await client.patch(f"/keys/{disabled['id']}", json={"enabled": False}, headers=headers)
    assert pause.status_code == 200, pause.text
    assert await use(client, disabled, 2) == [401, 401]
    assert (await verify(client, caller, disabled["key"]))["code"] == "DISABLED"

    response = await usage(client, headers, f"/keys/{disabled['id']}", since=hour, until=hour + HOUR)
    assert counted(response.json()) == {hour: ZERO | {"valid": 1, "rejected": 3}}
    assert await stored_hours(client, disabled["id"]) == {hour: (1, 0, 0, 3)}


# Identities


async def make_identity(client: httpx.AsyncClient, headers: dict[str, str], external_id: str = "acme") -> int:
    response = await client.post("/identities", json={"external_id": external_id}, headers=headers)
    assert response.status_code == 201, response.text
    return int(response.json()["id"])


async def test_an_identitys_usage_adds_up_all_its_keys(client: KeystileClient, clock: FakeClock) -> None:
    hour = half_past_next_hour(clock)
    headers = await user_headers(client)
    identity_id = await make_identity(client, headers)
    first = await create_key(client, headers, name="first", identity_id=identity_id)
    second = await create_key(client, headers, name="second", quota=1, identity_id=identity_id)
    alone = await create_key(client, headers, name="alone")

    assert await use(client, first, 3) == [200] * 3
    assert await use(client, second, 2) == [200, 429]
    assert (await client.post(f"/keys/{first['id']}/revoke", headers=headers)).status_code == 200
    assert await use(client, first) == [401]
    assert await use(client, alone, 4) == [200] * 4

    response = await usage(client, headers, f"/identities/{identity_id}", since=hour, until=hour + HOUR)

    assert response.status_code == 200, response.text
    assert counted(response.json()) == {hour: {"valid": 4, "rate_limited": 0, "quota_exceeded": 1, "rejected": 1}}
    default = await usage(client, headers, f"/identities/{identity_id}")
    assert len(default.json()["buckets"]) == 24


async def test_another_owners_identity_and_an_unknown_one_are_not_found(client: KeystileClient) -> None:
    alice = await user_headers(client)
    bob = await user_headers(client, "bob@example.com")
    admin = await admin_headers(client)
    identity_id = await make_identity(client, alice)

    answers = [
        await usage(client, bob, f"/identities/{identity_id}"),
        await usage(client, admin, f"/identities/{identity_id}"),
        await usage(client, alice, f"/identities/{identity_id + 1}"),
    ]

    assert [answer.status_code for answer in answers] == [404] * 3
    assert all(answer.json() == {"detail": "Identity not found"} for answer in answers)
    assert (await usage(client, alice, f"/identities/{identity_id}")).status_code == 200


# Ownership and bad input


async def test_another_owners_key_is_not_found_even_for_an_admin(client: KeystileClient) -> None:
    alice = await user_headers(client)
    bob = await user_headers(client, "bob@example.com")
    admin = await admin_headers(client)
    created = await create_key(client, alice)
    assert await use(client, created) == [200]

    answers = [
        await usage(client, bob, f"/keys/{created['id']}"),
        await usage(client, admin, f"/keys/{created['id']}"),
        await usage(client, alice, f"/keys/{created['id'] + 1}"),
    ]

    assert [answer.status_code for answer in answers] == [404] * 3
    assert all(answer.json() == {"detail": "API key not found"} for answer in answers)
    assert len(client.keystile.usage) == 1  # a refused read wrote nothing
    assert await stored_hours(client, created["id"]) == {}


async def test_without_a_bearer_token_it_is_401(client: KeystileClient) -> None:
    created = await create_key(client, await user_headers(client))

    response = await client.get(f"/keys/{created['id']}/usage")

    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == "Bearer"


@pytest.mark.parametrize(
    ("interval", "buckets_back"),
    [pytest.param("hour", 1000, id="1001-hours"), pytest.param("day", 1000, id="1001-days")],
)
async def test_more_than_1000_buckets_is_422_and_1000_is_fine(
    client: KeystileClient, clock: FakeClock, interval: str, buckets_back: int
) -> None:
    headers = await user_headers(client)
    created = await create_key(client, headers)
    step = HOUR if interval == "hour" else DAY
    current = hour_of(clock.now) if interval == "hour" else clock.now.replace(hour=0, minute=0, second=0, microsecond=0)

    too_many = await usage(client, headers, f"/keys/{created['id']}", interval=interval, since=current - 1000 * step)
    most = await usage(client, headers, f"/keys/{created['id']}", interval=interval, since=current - 999 * step)

    assert too_many.status_code == 422
    [error] = too_many.json()["detail"]
    assert error["loc"] == ["query", "since"]
    assert "at most 1000 buckets" in error["msg"]
    assert most.status_code == 200, most.text
    assert len(most.json()["buckets"]) == 1000
    assert starts(most.json())[-1] == current


async def test_since_later_than_until_is_422(client: KeystileClient, clock: FakeClock) -> None:
    headers = await user_headers(client)
    created = await create_key(client, headers)

    later = await usage(client, headers, f"/keys/{created['id']}", since=clock.now, until=clock.now - HOUR)
    future = await usage(client, headers, f"/keys/{created['id']}", since=clock.now + DAY)  # until defaults to now

    for response in (later, future):
        assert response.status_code == 422
        [error] = response.json()["detail"]
        assert error["loc"] == ["query", "since"]
        assert error["msg"] == "since must not be later than until (default: now)"


@pytest.mark.parametrize(
    "params",
    [
        pytest.param({"since": "yesterday"}, id="since-a-word"),
        pytest.param({"since": "2030-02-30T00:00:00Z"}, id="since-no-such-day"),
        pytest.param({"until": "2030-01-01T25:00:00Z"}, id="until-no-such-hour"),
        pytest.param({"since": ""}, id="since-empty"),
        pytest.param({"until": "1e400"}, id="until-a-huge-number"),
        pytest.param({"since": "0001-01-01T00:00:00+05:00"}, id="since-before-the-first-day"),
        pytest.param({"until": "9999-12-31T23:00:00-14:00"}, id="until-after-the-last-day"),
        pytest.param({"since": "1969-12-31T23:00:00Z"}, id="since-before-1970"),
        pytest.param({"interval": "week"}, id="interval-unknown"),
        pytest.param({"interval": "HOUR"}, id="interval-in-capitals"),
    ],
)
async def test_malformed_or_out_of_range_parameters_are_422_and_nothing_is_written(
    client: KeystileClient, params: dict[str, str]
) -> None:
    headers = await user_headers(client)
    created = await create_key(client, headers)
    assert await use(client, created) == [200]

    response = await client.get(f"/keys/{created['id']}/usage", params=params, headers=headers)

    assert response.status_code == 422, response.text
    assert response.json()["detail"][0]["loc"][0] == "query"
    assert len(client.keystile.usage) == 1  # still buffered: a refused read writes nothing
    assert await stored_hours(client, created["id"]) == {}


@pytest.mark.parametrize("path", ["/keys/0", "/keys/2147483648", "/keys/abc", "/identities/0", "/identities/x"])
async def test_a_malformed_id_is_422(client: KeystileClient, path: str) -> None:
    headers = await user_headers(client)

    response = await client.get(f"{path}/usage", headers=headers)

    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"][0] == "path"


# Reads see what this process still buffers; retention


async def test_a_read_includes_the_uses_this_process_has_not_written_yet(
    client: KeystileClient, clock: FakeClock
) -> None:
    hour = half_past_next_hour(clock)
    headers = await user_headers(client)
    created = await create_key(client, headers)
    assert await use(client, created, 4) == [200] * 4
    assert await stored_hours(client, created["id"]) == {}

    response = await usage(client, headers, f"/keys/{created['id']}", since=hour, until=hour + HOUR)

    assert counted(response.json()) == {hour: ZERO | {"valid": 4}}
    assert await stored_hours(client, created["id"]) == {hour: (4, 0, 0, 0)}
    assert len(client.keystile.usage) == 0


async def test_hours_past_retention_are_deleted_by_the_running_service(
    make_client: MakeClient, clock: FakeClock
) -> None:
    client = await make_client(usage_retention_days=2)
    first_hour = half_past_next_hour(clock)
    headers = await user_headers(client)
    created = await create_key(client, headers)
    assert await use(client, created) == [200]
    await client.keystile.usage.flush()
    clock.advance(24 * 3600)
    assert await use(client, created, 2) == [200, 200]
    await client.keystile.usage.flush()
    assert await stored_hours(client, created["id"]) == {first_hour: (1, 0, 0, 0), first_hour + DAY: (2, 0, 0, 0)}

    clock.advance(24 * 3600 + 3600)  # the first hour is now more than two days old, the second not
    response = await usage(client, await login(client), f"/keys/{created['id']}", interval="day")

    assert counted(response.json()) == {(first_hour + DAY).replace(hour=0): ZERO | {"valid": 2}}
    assert await stored_hours(client, created["id"]) == {first_hour + DAY: (2, 0, 0, 0)}
    assert (await client.get(f"/keys/{created['id']}", headers=await login(client))).json()["use_count"] == 3


def deletes(statements: list[str]) -> list[str]:
    return [statement for statement in statements if statement.lstrip().upper().startswith("DELETE")]


async def test_pruning_runs_at_most_once_an_hour(client: KeystileClient, clock: FakeClock) -> None:
    with recorded_statements(client.keystile) as first:
        await client.keystile.usage.flush()
    clock.advance(59 * 60)
    with recorded_statements(client.keystile) as within_the_hour:
        await client.keystile.usage.flush()
    clock.advance(60)
    with recorded_statements(client.keystile) as an_hour_later:
        await client.keystile.usage.flush()

    assert len(deletes(first)) == 2  # key hours and identity hours
    assert deletes(within_the_hour) == []
    assert len(deletes(an_hour_later)) == 2
