"""Events reach a real receiver, signed, from the transaction of their change; failures are retried with the same
webhook-id, recorded per attempt, and given up after the last retry."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

import pytest
from sqlalchemy import func, select

from keystile.clock import FakeClock
from keystile.events.models import OutboxEvent, WebhookDelivery
from tests.conftest import MakeClient
from tests.events.helpers import add_webhook, attempts, attempts_at_least, delivering_client
from tests.events.receiver import Receiver, verify_signature
from tests.helpers import KeystileClient, create_key, login, parse_time, user_headers


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with Receiver() as running:
        yield running


def assert_key_event(received_json: dict[str, object], event_type: str, key_id: int) -> dict[str, object]:
    assert set(received_json) == {"type", "timestamp", "data"}
    assert received_json["type"] == event_type
    data = received_json["data"]
    assert isinstance(data, dict)
    assert data["id"] == key_id
    assert "key" not in data
    assert "key_hash" not in data
    return data


async def outbox_count(client: KeystileClient) -> int:
    async with client.keystile.session_factory() as session:
        return int(await session.scalar(select(func.count()).select_from(OutboxEvent)) or 0)


async def test_each_key_change_sends_its_event_signed_to_the_owners_webhook(
    make_client: MakeClient, receiver: Receiver
) -> None:
    client = await delivering_client(make_client)
    headers = await user_headers(client)
    webhook = await add_webhook(client, headers, receiver.url)

    key = await create_key(client, headers, name="first")
    assert (await client.patch(f"/keys/{key['id']}", json={"name": "renamed"}, headers=headers)).status_code == 200
    rotated = await client.post(f"/keys/{key['id']}/rotate", json={"grace_seconds": 60}, headers=headers)
    assert rotated.status_code == 201
    new_key = rotated.json()
    assert (await client.post(f"/keys/{new_key['id']}/revoke", headers=headers)).status_code == 200
    received = await receiver.received(4)

    by_type = {request.json["type"]: request.json for request in received}  # concurrent sends: any order

    assert set(by_type) == {"key.created", "key.updated", "key.rotated", "key.revoked"}
    assert all(verify_signature(webhook["secret"], request) for request in received)
    assert len({request.webhook_id for request in received}) == 4
    assert assert_key_event(by_type["key.created"], "key.created", key["id"])["hint"] == key["hint"]
    assert assert_key_event(by_type["key.updated"], "key.updated", key["id"])["name"] == "renamed"
    assert assert_key_event(by_type["key.rotated"], "key.rotated", new_key["id"])["rotated_from"] == key["id"]
    assert assert_key_event(by_type["key.revoked"], "key.revoked", new_key["id"])["is_active"] is False
    for request in received:
        assert key["key"].encode() not in request.body
        assert new_key["key"].encode() not in request.body
        assert request.headers["content-type"] == "application/json"
        assert int(request.headers["webhook-timestamp"]) > 1_600_000_000  # Unix seconds of the attempt
    rows = await attempts_at_least(client, headers, webhook["id"], 4)
    assert [row["status_code"] for row in rows] == [200] * 4
    assert {row["event_id"] for row in rows} == {request.webhook_id for request in received}


async def test_a_webhook_gets_only_its_owners_events_of_the_types_it_subscribes_to(
    make_client: MakeClient, receiver: Receiver
) -> None:
    client = await delivering_client(make_client)
    alice = await user_headers(client, "alice@example.com")
    bob = await user_headers(client, "bob@example.com")
    await add_webhook(client, alice, receiver.url, ["key.revoked"])

    await create_key(client, bob, name="bobs")
    alices = await create_key(client, alice, name="alices")
    assert (await client.post(f"/keys/{alices['id']}/revoke", headers=alice)).status_code == 200
    (only,) = await receiver.received(1)

    assert_key_event(only.json, "key.revoked", alices["id"])
    await client.keystile.events.dispatcher.run_once()
    assert len(receiver.requests) == 1


async def test_the_test_endpoint_sends_webhook_test_whatever_the_subscription(
    make_client: MakeClient, receiver: Receiver
) -> None:
    client = await delivering_client(make_client)
    headers = await user_headers(client)
    webhook = await add_webhook(client, headers, receiver.url, ["key.revoked"])

    response = await client.post(f"/webhooks/{webhook['id']}/test", headers=headers)
    (received,) = await receiver.received(1)

    assert response.status_code == 202
    assert received.webhook_id == response.json()["event_id"]
    assert received.json["type"] == "webhook.test"
    assert verify_signature(webhook["secret"], received)


async def test_a_failed_attempt_is_retried_with_the_same_webhook_id_and_each_attempt_is_listed(
    make_client: MakeClient, receiver: Receiver, clock: FakeClock
) -> None:
    client = await delivering_client(make_client)
    headers = await user_headers(client)
    webhook = await add_webhook(client, headers, receiver.url, ["key.created"])
    receiver.answer(500)

    await create_key(client, headers)
    (first_row,) = await attempts_at_least(client, headers, webhook["id"], 1)
    clock.advance(1)
    client.keystile.events.dispatcher.wake()
    first, second = await receiver.received(2)
    rows = await attempts_at_least(client, headers, webhook["id"], 2)

    assert first.webhook_id == second.webhook_id
    assert first.body == second.body
    assert verify_signature(webhook["secret"], first)
    assert verify_signature(webhook["secret"], second)
    assert first_row["status_code"] == 500
    assert parse_time(first_row["next_attempt_at"]) == parse_time(first_row["at"]) + timedelta(seconds=1)
    assert [(row["attempt"], row["status_code"], row["next_attempt_at"]) for row in rows] == [
        (2, 200, None),
        (1, 500, first_row["next_attempt_at"]),
    ]
    assert {row["event_id"] for row in rows} == {first.webhook_id}


async def test_after_the_last_retry_the_delivery_is_failed_and_not_tried_again(
    make_client: MakeClient, receiver: Receiver, clock: FakeClock
) -> None:
    client = await delivering_client(make_client)  # retries after 1 s and 1 s: three attempts
    headers = await user_headers(client)
    webhook = await add_webhook(client, headers, receiver.url, ["key.created"])
    receiver.answer(503, 503, 503, 503)

    await create_key(client, headers)
    for attempt in (1, 2, 3):
        await attempts_at_least(client, headers, webhook["id"], attempt)
        clock.advance(2)
        client.keystile.events.dispatcher.wake()
    await client.keystile.events.dispatcher.run_once()
    rows = await attempts(client, headers, webhook["id"])

    assert len(receiver.requests) == 3
    assert next((row["attempt"], row["status_code"], row["next_attempt_at"]) for row in rows) == (3, 503, None)
    async with client.keystile.session_factory() as session:
        assert list(await session.scalars(select(WebhookDelivery.state))) == ["failed"]


async def test_a_redirect_is_recorded_with_its_status_and_not_followed(
    make_client: MakeClient, receiver: Receiver
) -> None:
    client = await delivering_client(make_client)
    headers = await user_headers(client)
    webhook = await add_webhook(client, headers, receiver.url, ["key.created"])
    receiver.answer(307, headers={"location": receiver.url + "/elsewhere"})

    await create_key(client, headers)
    (row,) = await attempts_at_least(client, headers, webhook["id"], 1)

    assert (row["status_code"], row["error"]) == (307, "redirect not followed")
    assert [request.path for request in receiver.requests] == ["/hook"]


async def test_a_refused_change_writes_no_event(make_client: MakeClient, receiver: Receiver) -> None:
    client = await delivering_client(make_client)
    headers = await user_headers(client)
    await add_webhook(client, headers, receiver.url)
    key = await create_key(client, headers)
    await receiver.received(1)
    assert (await client.post(f"/keys/{key['id']}/revoke", headers=headers)).status_code == 200
    before = await outbox_count(client)

    refused = await client.post(f"/keys/{key['id']}/rotate", json={}, headers=headers)
    again = await client.post(f"/keys/{key['id']}/revoke", headers=headers)  # idempotent: no change, no event

    assert refused.status_code == 409
    assert again.status_code == 200
    assert await outbox_count(client) == before


async def test_an_endpoint_failing_for_the_configured_days_is_disabled(
    make_client: MakeClient, receiver: Receiver, clock: FakeClock
) -> None:
    client = await delivering_client(make_client, webhook_disable_after_days=1, webhook_retry_delays=[86_400.0])
    headers = await user_headers(client)
    webhook = await add_webhook(client, headers, receiver.url, ["key.created"])
    receiver.answer(500, 500)

    await create_key(client, headers)
    await attempts_at_least(client, headers, webhook["id"], 1)
    clock.advance(86_400)
    client.keystile.events.dispatcher.wake()
    headers = await login(client)  # the day took the old token's validity with it
    await attempts_at_least(client, headers, webhook["id"], 2)
    shown = await client.get(f"/webhooks/{webhook['id']}", headers=headers)

    assert shown.json()["enabled"] is False
    enabled = await client.patch(f"/webhooks/{webhook['id']}", json={"enabled": True}, headers=headers)
    assert enabled.json()["enabled"] is True
