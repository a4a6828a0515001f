"""Rate limits as clients see them over HTTP (API.md section 2), on SQLite and PostgreSQL.

Quotas, the other half of section 2, are tested in tests/keys/test_quota.py.
"""

from __future__ import annotations

import pytest

from keystile.clock import FakeClock
from tests.conftest import MakeClient
from tests.helpers import EXPORT, KeystileClient, admin_headers, align, create_key, key_header, user_headers

# Rate limits


@pytest.mark.parametrize("limiter", ["memory", pytest.param("redis", marks=pytest.mark.redis)])
async def test_key_rate_limit_admits_its_limit_then_answers_429_with_retry_after(
    make_client: MakeClient, clock: FakeClock, request: pytest.FixtureRequest, limiter: str
) -> None:
    settings = {"redis_url": request.getfixturevalue("redis_url")} if limiter == "redis" else {}
    client = await make_client(**settings)
    headers = await user_headers(client)
    created = await create_key(client, headers, rate_limit={"limit": 3, "window_seconds": 60})
    align(clock, 60)

    admitted = [await client.get(EXPORT, headers=key_header(created)) for _ in range(3)]
    clock.advance(10)
    refused = await client.get(EXPORT, headers=key_header(created))

    assert [r.status_code for r in admitted] == [200, 200, 200]
    assert [r.headers["RateLimit"] for r in admitted] == [f'"key";r={r};t=60' for r in (2, 1, 0)]
    assert {r.headers["RateLimit-Policy"] for r in admitted} == {'"key";q=3;w=60'}
    assert refused.status_code == 429
    assert refused.json() == {"detail": "API key rate limit exceeded"}
    assert refused.headers["Retry-After"] == "50"
    assert refused.headers["RateLimit-Policy"] == '"key";q=3;w=60'
    assert refused.headers["RateLimit"] == '"key";r=0;t=50'
    detail = await client.get(f"/keys/{created['id']}", headers=headers)
    assert detail.json()["use_count"] == 3


async def test_rate_limited_key_is_admitted_again_when_retry_after_has_passed(
    client: KeystileClient, clock: FakeClock
) -> None:
    headers = await user_headers(client)
    created = await create_key(client, headers, rate_limit={"limit": 3, "window_seconds": 60})
    align(clock, 60)
    clock.advance(25)
    for _ in range(3):
        assert (await client.get(EXPORT, headers=key_header(created))).status_code == 200
    refused = await client.get(EXPORT, headers=key_header(created))
    retry_after = int(refused.headers["Retry-After"])

    clock.advance(retry_after - 1)
    early = await client.get(EXPORT, headers=key_header(created))
    clock.advance(1)
    on_time = await client.get(EXPORT, headers=key_header(created))

    assert retry_after == 35
    assert early.status_code == 429
    assert on_time.status_code == 200
    assert on_time.headers["RateLimit"] == '"key";r=2;t=60'


async def test_default_rate_limit_applies_to_keys_without_their_own(make_client: MakeClient, clock: FakeClock) -> None:
    client = await make_client(default_rate_limit="2/10")
    headers = await user_headers(client)
    plain = await create_key(client, headers, name="plain")
    own = await create_key(client, headers, name="own", rate_limit={"limit": 3, "window_seconds": 60})
    align(clock, 60)

    plain_responses = [await client.get(EXPORT, headers=key_header(plain)) for _ in range(3)]
    own_responses = [await client.get(EXPORT, headers=key_header(own)) for _ in range(3)]

    assert [r.status_code for r in plain_responses] == [200, 200, 429]
    assert {r.headers["RateLimit-Policy"] for r in plain_responses} == {'"key";q=2;w=10'}
    assert [r.headers["RateLimit"] for r in plain_responses] == [f'"key";r={r};t=10' for r in (1, 0, 0)]
    assert plain_responses[2].headers["Retry-After"] == "10"
    assert [r.status_code for r in own_responses] == [200, 200, 200]
    assert {r.headers["RateLimit-Policy"] for r in own_responses} == {'"key";q=3;w=60'}


async def test_key_without_any_rate_limit_gets_no_rate_limit_headers(client: KeystileClient) -> None:
    headers = await user_headers(client)
    created = await create_key(client, headers)

    responses = [await client.get(EXPORT, headers=key_header(created)) for _ in range(20)]

    assert {r.status_code for r in responses} == {200}
    assert not any("RateLimit" in r.headers or "RateLimit-Policy" in r.headers for r in responses)


async def test_verify_draws_cost_from_the_rate_limit_it_shares_with_requests(
    client: KeystileClient, clock: FakeClock
) -> None:
    admin = await admin_headers(client)
    headers = await user_headers(client)
    created = await create_key(client, headers, rate_limit={"limit": 3, "window_seconds": 60})
    align(clock, 60)

    first = await client.post("/v1/keys/verify", json={"key": created["key"], "cost": 2}, headers=admin)
    request = await client.get(EXPORT, headers=key_header(created))
    second = await client.post("/v1/keys/verify", json={"key": created["key"]}, headers=admin)

    assert first.status_code == 200
    assert first.json()["valid"] is True
    assert first.json()["ratelimit"] == {"limit": 3, "remaining": 1, "reset_seconds": 60}
    assert request.headers["RateLimit"] == '"key";r=0;t=60'
    assert second.status_code == 200
    assert (second.json()["valid"], second.json()["code"]) == (False, "RATE_LIMITED")
    assert second.json()["ratelimit"] == {"limit": 3, "remaining": 0, "reset_seconds": 60}


# Bad input

BAD_RATE_LIMITS = [
    pytest.param({"limit": 0, "window_seconds": 60}, id="zero-limit"),
    pytest.param({"limit": -1, "window_seconds": 60}, id="negative-limit"),
    pytest.param({"limit": 10**12, "window_seconds": 60}, id="huge-limit"),
    pytest.param({"limit": 1.5, "window_seconds": 60}, id="fractional-limit"),
    pytest.param({"limit": "10", "window_seconds": 60}, id="string-limit"),
    pytest.param({"limit": True, "window_seconds": 60}, id="boolean-limit"),
    pytest.param({"limit": 3, "window_seconds": 0}, id="zero-window"),
    pytest.param({"limit": 3, "window_seconds": -60}, id="negative-window"),
    pytest.param({"limit": 3, "window_seconds": 10**12}, id="huge-window"),
    pytest.param({"limit": 3, "window_seconds": 1.5}, id="fractional-window"),
    pytest.param({"limit": 3, "window_seconds": "60"}, id="string-window"),
    pytest.param({"limit": 3}, id="missing-window"),
    pytest.param({"limit": 3, "window_seconds": 60, "burst": 2}, id="unknown-field"),
    pytest.param(5, id="not-an-object"),
]


@pytest.mark.parametrize("rate_limit", BAD_RATE_LIMITS)
async def test_bad_rate_limit_on_create_is_rejected_with_422(client: KeystileClient, rate_limit: object) -> None:
    headers = await user_headers(client)

    response = await client.post("/keys/", json={"name": "bad", "rate_limit": rate_limit}, headers=headers)

    assert response.status_code == 422
    assert any("rate_limit" in error["loc"] for error in response.json()["detail"])
    assert (await client.get("/keys/", headers=headers)).json() == []


@pytest.mark.parametrize("rate_limit", BAD_RATE_LIMITS)
async def test_bad_rate_limit_on_update_is_rejected_and_changes_nothing(
    client: KeystileClient, rate_limit: object
) -> None:
    headers = await user_headers(client)
    created = await create_key(client, headers, rate_limit={"limit": 3, "window_seconds": 60})

    response = await client.patch(f"/keys/{created['id']}", json={"rate_limit": rate_limit}, headers=headers)

    assert response.status_code == 422
    stored = await client.get(f"/keys/{created['id']}", headers=headers)
    assert stored.json()["rate_limit"] == {"limit": 3, "window_seconds": 60}


@pytest.mark.parametrize(
    "cost",
    [
        pytest.param(-1, id="negative"),
        pytest.param(1_000_001, id="over-a-million"),
        pytest.param(10**30, id="huge"),
        pytest.param(1.5, id="fractional"),
    ],
)
async def test_verify_with_bad_cost_is_rejected_and_spends_nothing(
    client: KeystileClient, clock: FakeClock, cost: object
) -> None:
    admin = await admin_headers(client)
    headers = await user_headers(client)
    created = await create_key(client, headers, rate_limit={"limit": 3, "window_seconds": 60}, quota=5)
    align(clock, 60)

    response = await client.post("/v1/keys/verify", json={"key": created["key"], "cost": cost}, headers=admin)
    peek = await client.post("/v1/keys/verify", json={"key": created["key"], "cost": 0}, headers=admin)

    assert response.status_code == 422
    assert any("cost" in error["loc"] for error in response.json()["detail"])
    assert peek.json()["ratelimit"] == {"limit": 3, "remaining": 3, "reset_seconds": 60}
    assert peek.json()["quota_remaining"] == 5


async def test_verify_with_a_cost_above_the_limit_is_rate_limited_without_spending(
    client: KeystileClient, clock: FakeClock
) -> None:
    admin = await admin_headers(client)
    headers = await user_headers(client)
    created = await create_key(client, headers, rate_limit={"limit": 3, "window_seconds": 60}, quota=5)
    align(clock, 60)

    response = await client.post("/v1/keys/verify", json={"key": created["key"], "cost": 1_000_000}, headers=admin)
    request = await client.get(EXPORT, headers=key_header(created))

    assert response.status_code == 200
    assert (response.json()["valid"], response.json()["code"]) == (False, "RATE_LIMITED")
    assert request.status_code == 200
    assert request.headers["RateLimit"] == '"key";r=2;t=60'
