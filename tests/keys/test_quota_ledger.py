"""The quota ledger: leases from the database row, and no database read per request once a key is used up."""

from __future__ import annotations

from tests.helpers import KeystileClient, create_key, recorded_statements, user_headers


async def test_a_used_up_quota_refuses_further_requests_without_reading_the_database(client: KeystileClient) -> None:
    headers = await user_headers(client)
    key = await create_key(client, headers, quota=1)
    assert (await client.get("/data/export", headers={"X-API-Key": key["key"]})).status_code == 200
    assert (await client.get("/data/export", headers={"X-API-Key": key["key"]})).status_code == 429

    with recorded_statements(client.runtime.engine) as statements:
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
