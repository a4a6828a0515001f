"""Delivered and failed events and their attempts go after KEYSTILE_EVENT_RETENTION_DAYS; pending ones never do."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import select

from keystile.clock import FakeClock
from keystile.events.models import DeliveryAttempt, OutboxEvent, WebhookDelivery
from keystile.events.retention import Pruned, Retention
from tests.conftest import MakeClient
from tests.events.helpers import add_webhook, attempts, attempts_at_least, delivering_client, eventually
from tests.events.receiver import Receiver
from tests.helpers import KeystileClient, create_key, login, user_headers


async def stored(client: KeystileClient) -> tuple[list[OutboxEvent], list[WebhookDelivery], list[DeliveryAttempt]]:
    async with client.keystile.session_factory() as session:
        return (
            list(await session.scalars(select(OutboxEvent).order_by(OutboxEvent.id))),
            list(await session.scalars(select(WebhookDelivery).order_by(WebhookDelivery.id))),
            list(await session.scalars(select(DeliveryAttempt).order_by(DeliveryAttempt.id))),
        )


async def all_fanned_out(client: KeystileClient) -> bool:
    events, _, _ = await stored(client)
    return all(event.fanned_out for event in events)


async def test_events_past_retention_go_with_their_attempts_unless_a_delivery_is_pending(
    make_client: MakeClient, clock: FakeClock
) -> None:
    with Receiver() as receiver, Receiver() as down:
        down.stop()  # refuses connections: its deliveries stay pending
        client = await delivering_client(make_client, webhook_retry_delays=[1.0], event_retention_days=30)
        headers = await user_headers(client)
        working = await add_webhook(client, headers, receiver.url, ["key.created"])
        dead = await add_webhook(client, headers, down.url, ["key.revoked"])
        receiver.answer(500, 500)
        failed_key = await create_key(client, headers, name="failed")
        await attempts_at_least(client, headers, working["id"], 1)
        clock.advance(2)
        client.keystile.events.dispatcher.wake()
        await attempts_at_least(client, headers, working["id"], 2)  # the last attempt: failed
        clock.advance(5)  # past the endpoint's back-off
        await create_key(client, headers, name="delivered")
        await receiver.received(3)
        unsubscribed = await client.patch(f"/keys/{failed_key['id']}", json={"name": "renamed"}, headers=headers)
        assert unsubscribed.status_code == 200  # key.updated: nobody subscribes, no delivery
        assert (await client.post(f"/keys/{failed_key['id']}/revoke", headers=headers)).status_code == 200
        await attempts_at_least(client, headers, dead["id"], 1)
        # Disabled now, so its delivery waits (pending) however far the clock moves.
        disabled = await client.patch(f"/webhooks/{dead['id']}", json={"enabled": False}, headers=headers)
        assert disabled.status_code == 200
        await eventually(lambda: all_fanned_out(client))
        old_events, _, _ = await stored(client)

        clock.advance(timedelta(days=30, seconds=10).total_seconds())
        headers = await login(client)
        await create_key(client, headers, name="recent")
        await receiver.received(4)
        await attempts_at_least(client, headers, working["id"], 4)
        pruned = await client.keystile.events.retention.prune(clock())

    events, deliveries, kept_attempts = await stored(client)
    revoked = next(event for event in old_events if event.type == "key.revoked")
    assert [event.type for event in old_events] == ["key.created", "key.created", "key.updated", "key.revoked"]
    assert pruned == Pruned(events=3, attempts=3)
    assert [event.id for event in events[:1]] == [revoked.id]  # pending to the disabled endpoint: kept
    assert [event.type for event in events] == ["key.revoked", "key.created"]
    assert [(row.endpoint_id, row.state) for row in deliveries] == [
        (dead["id"], "pending"),
        (working["id"], "delivered"),
    ]
    assert [(row.endpoint_id, row.attempt, row.error) for row in kept_attempts] == [
        (dead["id"], 1, "connection failed"),
        (working["id"], 1, None),
    ]
    assert [row["status_code"] for row in await attempts(client, headers, working["id"])] == [200]


async def test_an_expiry_event_is_kept_while_its_key_could_be_warned_again_so_it_is_sent_once(
    make_client: MakeClient, clock: FakeClock
) -> None:
    warning = timedelta(days=60)  # longer than the 30 days of retention
    client = await delivering_client(
        make_client, expiry_warning_seconds=int(warning.total_seconds()), event_retention_days=30
    )
    headers = await user_headers(client)
    await create_key(client, headers, expires_in=int(timedelta(days=50).total_seconds()))
    scan = client.keystile.events.expiry
    assert await scan.scan() == 1
    await eventually(lambda: all_fanned_out(client))

    clock.advance(timedelta(days=31).total_seconds())
    await client.keystile.events.retention.prune(clock())
    warned_again = await scan.scan()
    events, _, _ = await stored(client)

    assert warned_again == 0
    assert [event.type for event in events] == ["key.expiring"]  # key.created, as old, went


async def test_pruning_runs_at_most_once_an_hour_by_the_service_clock(
    make_client: MakeClient, clock: FakeClock
) -> None:
    client = await delivering_client(make_client)
    retention = Retention(
        client.keystile.events.sessions, clock=clock, retention_days=1, keep_deduped_for=timedelta(days=1)
    )
    headers = await user_headers(client)
    await create_key(client, headers, name="first")
    await eventually(lambda: all_fanned_out(client))

    clock.advance(timedelta(days=1, minutes=-30).total_seconds())
    assert await retention.prune_if_due() == Pruned(events=0, attempts=0)  # a day old in half an hour: kept
    clock.advance(timedelta(minutes=31).total_seconds())
    assert await retention.prune_if_due() is None  # past retention now, but pruned less than an hour ago
    clock.advance(timedelta(minutes=29).total_seconds())
    assert await retention.prune_if_due() == Pruned(events=1, attempts=0)
    events, _, _ = await stored(client)
    assert events == []


async def test_a_starting_service_prunes_what_is_past_the_configured_retention(
    make_client: MakeClient, clock: FakeClock
) -> None:
    first = await delivering_client(make_client)
    await create_key(first, await user_headers(first))
    await eventually(lambda: all_fanned_out(first))
    clock.advance(timedelta(days=7, seconds=1).total_seconds())

    second = await delivering_client(make_client, event_retention_days=7)  # checks at start, then every minute

    async def pruned() -> bool:
        events, _, _ = await stored(second)
        return not events

    assert await eventually(pruned)
