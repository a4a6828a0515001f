"""Total-use quotas (keystile.keys.quota, API.md section 2): admitted exactly, never over-admitted, leased from
the database row, shared by both keys of a rotation, and never refilled by Redis."""

from __future__ import annotations

import asyncio

import pytest
import redis

from tests.conftest import MakeClient
from tests.helpers import (
    EXPORT,
    KeystileClient,
    admin_headers,
    create_key,
    key_header,
    recorded_statements,
    stored_quota,
    user_headers,
)

# Admission and reporting


async def test_quota_admits_its_total_then_answers_429_without_retry_after(client: KeystileClient) -> None:
    headers = await user_headers(client)
    created = await create_key(client, headers, quota=2)

    responses = [await client.get(EXPORT, headers=key_header(created)) for _ in range(4)]

    assert created["quota_remaining"] == 2
    assert [r.status_code for r in responses] == [200, 200, 429, 429]
    assert responses[2].json() == {"detail": "API key quota exhausted"}
    assert "Retry-After" not in responses[2].headers
    detail = await client.get(f"/keys/{created['id']}", headers=headers)
    assert detail.json()["quota_remaining"] == 0
    assert detail.json()["use_count"] == 2


async def test_quota_remaining_is_reported_by_get_and_by_verify(client: KeystileClient) -> None:
    admin = await admin_headers(client)
    headers = await user_headers(client)
    created = await create_key(client, headers, quota=50)

    await client.get(EXPORT, headers=key_header(created))
    after_one = await client.get(f"/keys/{created['id']}", headers=headers)
    verified = await client.post("/v1/keys/verify", json={"key": created["key"], "cost": 5}, headers=admin)
    peeked = await client.post("/v1/keys/verify", json={"key": created["key"], "cost": 0}, headers=admin)
    after_verify = await client.get(f"/keys/{created['id']}", headers=headers)
    listed = await client.get("/keys/", headers=headers)

    assert after_one.json()["quota_remaining"] == 49
    assert (verified.json()["valid"], verified.json()["quota_remaining"]) == (True, 44)
    assert (peeked.json()["valid"], peeked.json()["quota_remaining"]) == (True, 44)
    assert after_verify.json()["quota_remaining"] == 44
    assert [k["quota_remaining"] for k in listed.json()] == [44]
    await client.keystile.quotas.release_all()
    assert await stored_quota(client, created["id"]) == 44


async def test_verify_reports_quota_exceeded_when_cost_exceeds_the_balance(client: KeystileClient) -> None:
    admin = await admin_headers(client)
    headers = await user_headers(client)
    created = await create_key(client, headers, quota=3)

    too_much = await client.post("/v1/keys/verify", json={"key": created["key"], "cost": 4}, headers=admin)
    exact = await client.post("/v1/keys/verify", json={"key": created["key"], "cost": 3}, headers=admin)

    assert (too_much.json()["valid"], too_much.json()["code"]) == (False, "QUOTA_EXCEEDED")
    assert (exact.json()["valid"], exact.json()["quota_remaining"]) == (True, 0)
    await client.keystile.quotas.release_all()
    assert await stored_quota(client, created["id"]) == 0


async def test_quota_is_never_over_admitted_under_concurrency(client: KeystileClient) -> None:
    headers = await user_headers(client)
    created = await create_key(client, headers, quota=5)

    responses = await asyncio.gather(*(client.get(EXPORT, headers=key_header(created)) for _ in range(20)))

    statuses = sorted(r.status_code for r in responses)
    assert statuses == [200] * 5 + [429] * 15
    assert {r.json()["detail"] for r in responses if r.status_code == 429} == {"API key quota exhausted"}
    detail = await client.get(f"/keys/{created['id']}", headers=headers)
    assert detail.json()["quota_remaining"] == 0
    await client.keystile.quotas.release_all()
    assert await stored_quota(client, created["id"]) == 0


async def test_unspent_quota_lease_returns_to_the_database_on_release(client: KeystileClient) -> None:
    headers = await user_headers(client)
    created = await create_key(client, headers, quota=1000)

    for _ in range(3):
        assert (await client.get(EXPORT, headers=key_header(created))).status_code == 200
    leased_row = await stored_quota(client, created["id"])
    await client.keystile.quotas.release_all()

    assert leased_row is not None
    assert leased_row < 997  # a block was leased, so the row is below the true balance while the process runs
    assert await stored_quota(client, created["id"]) == 997


@pytest.mark.redis
async def test_redis_flush_does_not_refill_a_quota(make_client: MakeClient, redis_url: str) -> None:
    client = await make_client(redis_url=redis_url)
    headers = await user_headers(client)
    created = await create_key(client, headers, quota=3)
    before = [await client.get(EXPORT, headers=key_header(created)) for _ in range(3)]

    with redis.Redis.from_url(redis_url) as connection:
        connection.flushdb()
    after = [await client.get(EXPORT, headers=key_header(created)) for _ in range(2)]

    assert [r.status_code for r in before] == [200, 200, 200]
    assert [r.status_code for r in after] == [429, 429]
    assert after[0].json() == {"detail": "API key quota exhausted"}
    assert (await client.get(f"/keys/{created['id']}", headers=headers)).json()["quota_remaining"] == 0
    await client.keystile.quotas.release_all()
    assert await stored_quota(client, created["id"]) == 0


# Rotation: one balance for both keys


async def test_rotation_moves_the_quota_and_both_keys_draw_from_one_balance_during_grace(
    client: KeystileClient,
) -> None:
    headers = await user_headers(client)
    old = await create_key(client, headers, quota=50)
    for _ in range(2):
        assert (await client.get(EXPORT, headers=key_header(old))).status_code == 200

    rotated = await client.post(f"/keys/{old['id']}/rotate", json={"grace_seconds": 3600}, headers=headers)
    new = rotated.json()
    # Old and new keys alternately, starting with the old one: each use comes off the one shared balance.
    uses = [await client.get(EXPORT, headers=key_header(new if i % 2 else old)) for i in range(48)]
    after_old = await client.get(EXPORT, headers=key_header(old))
    after_new = await client.get(EXPORT, headers=key_header(new))

    assert rotated.status_code == 201
    assert new["quota_remaining"] == 48
    assert [r.status_code for r in uses] == [200] * 48
    assert (after_old.status_code, after_new.status_code) == (429, 429)
    assert after_old.json() == after_new.json() == {"detail": "API key quota exhausted"}
    assert (await client.get(f"/keys/{new['id']}", headers=headers)).json()["quota_remaining"] == 0
    await client.keystile.quotas.release_all()
    assert await stored_quota(client, new["id"]) == 0


async def test_old_key_during_grace_reports_the_shared_quota_balance(client: KeystileClient) -> None:
    headers = await user_headers(client)
    old = await create_key(client, headers, quota=50)
    assert (await client.get(EXPORT, headers=key_header(old))).status_code == 200
    new = (await client.post(f"/keys/{old['id']}/rotate", json={"grace_seconds": 3600}, headers=headers)).json()
    assert (await client.get(EXPORT, headers=key_header(old))).status_code == 200

    old_detail = await client.get(f"/keys/{old['id']}", headers=headers)
    new_detail = await client.get(f"/keys/{new['id']}", headers=headers)

    assert new_detail.json()["quota_remaining"] == 48
    assert old_detail.json()["quota_remaining"] == 48


# The ledger: leases from the row, no read per request once used up


async def test_a_used_up_quota_refuses_further_requests_without_reading_the_database(client: KeystileClient) -> None:
    headers = await user_headers(client)
    key = await create_key(client, headers, quota=1)
    assert (await client.get("/data/export", headers={"X-API-Key": key["key"]})).status_code == 200
    assert (await client.get("/data/export", headers={"X-API-Key": key["key"]})).status_code == 429

    with recorded_statements(client.keystile) as statements:
        for _ in range(5):
            response = await client.get("/data/export", headers={"X-API-Key": key["key"]})
            assert response.status_code == 429
            assert response.json() == {"detail": "API key quota exhausted"}
    assert statements == []


async def test_raising_a_used_up_quota_takes_effect_at_once(client: KeystileClient) -> None:
    headers = await user_headers(client)
    key = await create_key(client, headers, quota=1)
    assert (await client.get("/data/export", headers={"X-API-Key": key["key"]})).status_code == 200
    assert (await client.get("/data/export", headers={"X-API-Key": key["key"]})).status_code == 429

    patched = await client.patch(f"/keys/{key['id']}", json={"quota": 2}, headers=headers)
    assert patched.status_code == 200
    assert patched.json()["quota_remaining"] == 2
    assert (await client.get("/data/export", headers={"X-API-Key": key["key"]})).status_code == 200
    assert (await client.get("/data/export", headers={"X-API-Key": key["key"]})).status_code == 200
    assert (await client.get("/data/export", headers={"X-API-Key": key["key"]})).status_code == 429


# Bad input


@pytest.mark.parametrize(
    "quota",
    [pytest.param(-1, id="negative"), pytest.param(1.5, id="fractional"), pytest.param(2**63, id="huge")],
)
async def test_bad_quota_is_rejected_with_422(client: KeystileClient, quota: object) -> None:
    headers = await user_headers(client)

    response = await client.post("/keys/", json={"name": "bad", "quota": quota}, headers=headers)

    assert response.status_code == 422
    assert (await client.get("/keys/", headers=headers)).json() == []
