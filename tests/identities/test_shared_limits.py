"""An identity's rate limit and quota are shared by all its keys, and both the key's limits and the identity's must
admit a request (API.md section 8). In one process here, on the embedded limiter and on Redis; across two real
processes in test_two_processes.py."""

from __future__ import annotations

import asyncio

import pytest

from keystile.clock import FakeClock
from tests.conftest import MakeClient
from tests.helpers import EXPORT, KeystileClient, admin_headers, align, create_key, key_header, user_headers
from tests.identities.test_identities_api import create_identity


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.redis)])
async def limited(request: pytest.FixtureRequest, make_client: MakeClient) -> KeystileClient:
    if request.param == "memory":
        return await make_client()
    return await make_client(redis_url=request.getfixturevalue("redis_url"))


async def test_the_identity_rate_limit_is_shared_by_its_keys_exactly(limited: KeystileClient, clock: FakeClock) -> None:
    align(clock, 60)
    headers = await user_headers(limited)
    identity = await create_identity(limited, headers, rate_limit={"limit": 5, "window_seconds": 60})
    keys = [await create_key(limited, headers, name=f"k{i}", identity_id=identity["id"]) for i in range(3)]

    answers = await asyncio.gather(*(limited.get(EXPORT, headers=key_header(keys[i % 3])) for i in range(15)))

    assert sorted(a.status_code for a in answers) == [200] * 5 + [429] * 10
    refused = next(a for a in answers if a.status_code == 429)
    assert refused.json() == {"detail": "API key rate limit exceeded"}
    assert 1 <= int(refused.headers["Retry-After"]) <= 60
    assert refused.headers["RateLimit-Policy"] == '"identity";q=5;w=60'


async def test_both_policies_appear_in_the_fields_and_a_key_refusal_spends_nothing_of_the_identity(
    limited: KeystileClient, clock: FakeClock
) -> None:
    align(clock, 60)
    headers = await user_headers(limited)
    identity = await create_identity(limited, headers, rate_limit={"limit": 10, "window_seconds": 60})
    tight = await create_key(
        limited, headers, name="tight", identity_id=identity["id"], rate_limit={"limit": 2, "window_seconds": 60}
    )
    other = await create_key(limited, headers, name="other", identity_id=identity["id"])

    first = await limited.get(EXPORT, headers=key_header(tight))
    for _ in range(4):  # two admitted in all, then refused by the key's own limit
        await limited.get(EXPORT, headers=key_header(tight))
    from_other = await limited.get(EXPORT, headers=key_header(other))

    assert first.headers["RateLimit-Policy"] == '"key";q=2;w=60, "identity";q=10;w=60'
    assert first.headers["RateLimit"].startswith('"key";r=1;t=')
    assert ', "identity";r=9;t=' in first.headers["RateLimit"]
    # 2 admitted for `tight`; its 3 refusals took nothing from the identity: `other` sees 10 - 2 - 1 left.
    assert from_other.status_code == 200
    assert from_other.headers["RateLimit"].startswith('"identity";r=7;t=')


async def test_the_identity_quota_is_shared_exactly_and_a_rate_limit_refusal_spends_none(
    limited: KeystileClient, clock: FakeClock
) -> None:
    align(clock, 60)
    headers = await user_headers(limited)
    identity = await create_identity(limited, headers, quota=6)
    capped = await create_key(
        limited, headers, name="capped", identity_id=identity["id"], rate_limit={"limit": 1, "window_seconds": 60}
    )
    free = await create_key(limited, headers, name="free", identity_id=identity["id"])

    capped_answers = [await limited.get(EXPORT, headers=key_header(capped)) for _ in range(3)]
    free_answers = await asyncio.gather(*(limited.get(EXPORT, headers=key_header(free)) for _ in range(10)))

    assert [a.status_code for a in capped_answers] == [200, 429, 429]
    assert sorted(a.status_code for a in free_answers) == [200] * 5 + [429] * 5
    exhausted = next(a for a in free_answers if a.status_code == 429)
    assert exhausted.json() == {"detail": "API key quota exhausted"}
    await limited.keystile.identity_quotas.release_all()
    shown = await limited.get(f"/identities/{identity['id']}", headers=headers)
    assert shown.json()["quota_remaining"] == 0


async def test_an_identity_refusal_gives_the_keys_own_quota_back(limited: KeystileClient) -> None:
    headers = await user_headers(limited)
    identity = await create_identity(limited, headers, quota=1)
    key = await create_key(limited, headers, identity_id=identity["id"], quota=5)

    answers = [await limited.get(EXPORT, headers=key_header(key)) for _ in range(3)]

    assert [a.status_code for a in answers] == [200, 429, 429]
    assert (await limited.get(f"/keys/{key['id']}", headers=headers)).json()["quota_remaining"] == 4


async def test_verify_answers_carry_the_identity_and_its_refusals(limited: KeystileClient) -> None:
    admin = await admin_headers(limited)
    headers = await user_headers(limited)
    identity = await create_identity(
        limited,
        headers,
        external_id="cust-1",
        metadata={"plan": "pro"},
        quota=1,
        rate_limit={"limit": 5, "window_seconds": 60},
    )
    key = await create_key(limited, headers, identity_id=identity["id"])
    plain = await create_key(limited, headers, name="plain")

    valid = await limited.post("/v1/keys/verify", json={"key": key["key"]}, headers=admin)
    spent = await limited.post("/v1/keys/verify", json={"key": key["key"]}, headers=admin)
    alone = await limited.post("/v1/keys/verify", json={"key": plain["key"]}, headers=admin)

    assert valid.json()["identity"] == {"id": identity["id"], "external_id": "cust-1", "metadata": {"plan": "pro"}}
    assert (valid.json()["valid"], valid.json()["quota_remaining"]) == (True, 0)
    assert valid.json()["ratelimit"]["limit"] == 5
    assert (spent.json()["code"], spent.json()["identity"]["id"]) == ("QUOTA_EXCEEDED", identity["id"])
    assert alone.json()["identity"] is None


async def test_a_change_to_the_identity_reaches_its_cached_keys_at_once(limited: KeystileClient) -> None:
    headers = await user_headers(limited)
    identity = await create_identity(limited, headers, rate_limit={"limit": 1, "window_seconds": 3600})
    key = await create_key(limited, headers, identity_id=identity["id"])

    first = await limited.get(EXPORT, headers=key_header(key))
    refused = await limited.get(EXPORT, headers=key_header(key))
    await limited.patch(f"/identities/{identity['id']}", json={"rate_limit": None}, headers=headers)
    after = await limited.get(EXPORT, headers=key_header(key))

    assert (first.status_code, refused.status_code, after.status_code) == (200, 429, 200)
    assert "RateLimit-Policy" not in after.headers


async def test_a_change_that_leaves_the_quota_alone_loses_no_leased_unit(client: KeystileClient) -> None:
    headers = await user_headers(client)
    identity = await create_identity(client, headers, quota=1000)
    key = await create_key(client, headers, identity_id=identity["id"], quota=500)
    assert (await client.get(EXPORT, headers=key_header(key))).status_code == 200  # both balances now leased here

    await client.patch(f"/identities/{identity['id']}", json={"metadata": {"plan": "pro"}}, headers=headers)
    await client.patch(f"/keys/{key['id']}", json={"name": "renamed"}, headers=headers)
    await client.keystile.quotas.release_all()
    await client.keystile.identity_quotas.release_all()

    assert (await client.get(f"/identities/{identity['id']}", headers=headers)).json()["quota_remaining"] == 999
    assert (await client.get(f"/keys/{key['id']}", headers=headers)).json()["quota_remaining"] == 499


async def test_setting_the_quota_anew_voids_the_leases(client: KeystileClient) -> None:
    headers = await user_headers(client)
    identity = await create_identity(client, headers, quota=1000)
    key = await create_key(client, headers, identity_id=identity["id"])
    assert (await client.get(EXPORT, headers=key_header(key))).status_code == 200

    await client.patch(f"/identities/{identity['id']}", json={"quota": 10}, headers=headers)
    await client.keystile.identity_quotas.release_all()

    assert (await client.get(f"/identities/{identity['id']}", headers=headers)).json()["quota_remaining"] == 10
