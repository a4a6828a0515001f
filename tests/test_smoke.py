from __future__ import annotations

from tests.helpers import KeystileClient, create_key, user_headers


async def test_lesson_flow_issues_a_key_that_opens_data_export(client: KeystileClient) -> None:
    headers = await user_headers(client)
    created = await create_key(client, headers)
    response = await client.get("/data/export", headers={"X-API-Key": created["key"]})
    assert response.status_code == 200
    assert response.json() == {"owner": created["owner_id"], "data": []}
