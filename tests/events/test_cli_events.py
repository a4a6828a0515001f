"""`keystile webhooks list` and `keystile events replay`, run as real subprocesses against the database an in-process
app (SQLite and PostgreSQL) or a real `keystile serve` delivers from."""

from __future__ import annotations

import asyncio
import re
import shutil
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from keystile.clock import FakeClock
from keystile.events.models import OutboxEvent, WebhookDelivery
from tests import backends
from tests.conftest import TEST_SECRET_KEY, MakeClient
from tests.events.helpers import add_webhook, attempts_at_least, delivering_client
from tests.events.receiver import Receiver, verify_signature
from tests.events.test_processes import add_webhook as add_webhook_over_http
from tests.events.test_processes import wait_for_attempts
from tests.helpers import KeystileClient, create_key, user_headers
from tests.process import KeystileServer, register_and_issue_key
from tests.test_cli import Cli


def cli_on(tmp_path: Path, database_url: str) -> Cli:
    """`keystile` with the test's database and secret (the webhook secrets are sealed with it)."""
    cli = Cli(tmp_path)
    cli.env |= {"KEYSTILE_DATABASE_URL": database_url, "KEYSTILE_SECRET_KEY": TEST_SECRET_KEY}
    return cli


async def run(cli: Cli, *args: str) -> str:
    """`cli.ok` off the event loop, which keeps delivering while the command runs."""
    return await asyncio.to_thread(cli.ok, *args)


def table_rows(output: str) -> list[list[str]]:
    """The lines of `webhooks list`, split into cells (columns are at least two spaces apart)."""
    return [re.split(r"\s{2,}", line.strip()) for line in output.strip().splitlines()]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with Receiver() as running:
        yield running


async def deliveries(client: KeystileClient) -> list[WebhookDelivery]:
    async with client.keystile.session_factory() as session:
        return list(await session.scalars(select(WebhookDelivery).order_by(WebhookDelivery.id)))


async def test_webhooks_list_shows_owner_url_events_state_and_delivery_counts_but_never_the_secret(
    make_client: MakeClient, database_url: str, tmp_path: Path, receiver: Receiver, clock: FakeClock
) -> None:
    client = await delivering_client(make_client, webhook_retry_delays=[1.0])  # two attempts, then failed
    alice = await user_headers(client, "alice@example.com")
    bob = await user_headers(client, "bob@example.com")
    alices = await add_webhook(client, alice, receiver.url, ["key.created"])
    with Receiver() as failing:
        failing.answer(500, 500, 500)
        bobs = await add_webhook(client, bob, failing.url, ["key.created", "key.revoked"])
        await create_key(client, alice)
        await create_key(client, bob, name="first")
        await attempts_at_least(client, bob, bobs["id"], 1)
        clock.advance(2)
        client.keystile.events.dispatcher.wake()
        await attempts_at_least(client, bob, bobs["id"], 2)  # the second and last: failed
        await create_key(client, bob, name="second")
        clock.advance(5)  # past the endpoint's back-off after two failures
        client.keystile.events.dispatcher.wake()
        await attempts_at_least(client, bob, bobs["id"], 3)  # pending, its retry a second away on the fake clock
        await attempts_at_least(client, alice, alices["id"], 1)
    cli = cli_on(tmp_path, database_url)

    everyone = await run(cli, "webhooks", "list")
    only_bob = await run(cli, "webhooks", "list", "--email", "bob@example.com")
    nobody = await asyncio.to_thread(cli.run, "webhooks", "list", "--email", "nobody@example.com")

    header, *rows = table_rows(everyone)
    assert header == ["ID", "OWNER", "URL", "EVENTS", "ENABLED", "PENDING", "FAILED", "LAST ATTEMPT"]
    by_id = {int(row[0]): row for row in rows}
    assert set(by_id) == {alices["id"], bobs["id"]}
    assert by_id[alices["id"]][1:7] == ["alice@example.com", receiver.url, "key.created", "yes", "0", "0"]
    assert by_id[alices["id"]][7].endswith("Z 200")
    bob_row = by_id[bobs["id"]]
    assert bob_row[1:4] == ["bob@example.com", failing.url, "key.created,key.revoked"]
    assert bob_row[4].startswith("yes (failing since ")
    assert bob_row[5:7] == ["1", "1"]
    assert bob_row[7].endswith("Z 500")
    for secret in (alices["secret"], bobs["secret"], alices["secret"].removeprefix("whsec_")):
        assert secret not in everyone
    assert "v1." not in everyone  # nor the sealed form
    assert [row[0] for row in table_rows(only_bob)[1:]] == [str(bobs["id"])]
    assert nobody.returncode == 1
    assert "no user with email nobody@example.com" in nobody.stderr
    assert "Traceback" not in nobody.stderr


async def test_replay_sends_the_events_since_a_time_again_with_their_webhook_ids(
    make_client: MakeClient, database_url: str, tmp_path: Path, receiver: Receiver, clock: FakeClock
) -> None:
    client = await delivering_client(make_client)
    headers = await user_headers(client)
    webhook = await add_webhook(client, headers, receiver.url, ["key.created", "key.revoked"])
    key = await create_key(client, headers)
    assert (await client.post(f"/keys/{key['id']}/revoke", headers=headers)).status_code == 200
    originals = await receiver.received(2)
    await attempts_at_least(client, headers, webhook["id"], 2)

    output = await run(
        cli_on(tmp_path, database_url), "events", "replay", "--since", "1h", "--webhook", str(webhook["id"])
    )

    assert output.startswith("queued 2 deliveries of 2 events to 1 endpoint ")
    queued = await deliveries(client)
    assert [(row.state, row.attempts) for row in queued] == [("pending", 0), ("pending", 0)]
    # Due at the command's own time, which the app's fake clock has not reached yet; now it has.
    clock.advance(600)
    client.keystile.events.dispatcher.wake()
    replayed = (await receiver.received(4))[2:]
    assert {request.webhook_id for request in replayed} == {request.webhook_id for request in originals}
    original_bodies = {request.webhook_id: request.body for request in originals}
    assert all(request.body == original_bodies[request.webhook_id] for request in replayed)
    assert all(verify_signature(webhook["secret"], request) for request in replayed)
    rows = await attempts_at_least(client, headers, webhook["id"], 4)
    assert [(row["attempt"], row["status_code"]) for row in rows] == [(1, 200)] * 4


async def test_replay_without_a_webhook_goes_to_each_enabled_subscribed_endpoint_of_the_owner_within_the_times(
    make_client: MakeClient, database_url: str, tmp_path: Path, receiver: Receiver, clock: FakeClock
) -> None:
    client = await delivering_client(make_client)
    alice = await user_headers(client, "alice@example.com")
    bob = await user_headers(client, "bob@example.com")
    await add_webhook(client, alice, f"{receiver.url}/created", ["key.created"])
    await add_webhook(client, alice, f"{receiver.url}/revoked", ["key.revoked"])
    disabled = await add_webhook(client, alice, f"{receiver.url}/disabled", ["key.created"])
    assert (
        await client.patch(f"/webhooks/{disabled['id']}", json={"enabled": False}, headers=alice)
    ).status_code == 200
    await add_webhook(client, bob, f"{receiver.url}/bobs", ["key.created"])
    start = clock()
    key = await create_key(client, alice)
    clock.advance(600)  # later than the commands' own clock: what they queue is due at once
    assert (await client.post(f"/keys/{key['id']}/revoke", headers=alice)).status_code == 200
    await create_key(client, bob)
    await receiver.received(3)
    cli = cli_on(tmp_path, database_url)
    since = (start - timedelta(seconds=1)).isoformat()

    first_part = await run(
        cli, "events", "replay", "--since", since, "--until", (start + timedelta(minutes=5)).isoformat()
    )
    client.keystile.events.dispatcher.wake()
    first_sent = (await receiver.received(4))[3:]
    everything = await run(
        cli, "events", "replay", "--since", since, "--until", (start + timedelta(hours=1)).isoformat()
    )
    client.keystile.events.dispatcher.wake()
    all_sent = (await receiver.received(7))[4:]
    refused = await asyncio.to_thread(cli.run, "events", "replay", "--since", since, "--webhook", str(disabled["id"]))

    assert first_part.startswith("queued 1 deliveries of 1 events to 1 endpoint ")
    assert [request.path for request in first_sent] == ["/hook/created"]
    assert everything.startswith("queued 3 deliveries of 3 events to 3 endpoints ")
    assert sorted(request.path for request in all_sent) == ["/hook/bobs", "/hook/created", "/hook/revoked"]
    assert [row.endpoint_id for row in await deliveries(client) if row.endpoint_id == disabled["id"]] == []
    assert refused.returncode == 1
    assert f"webhook {disabled['id']} is disabled" in refused.stderr
    assert "Traceback" not in refused.stderr
    assert len(receiver.requests) == 7


async def test_replay_queues_an_event_for_an_endpoint_added_after_it_was_sent(
    make_client: MakeClient, database_url: str, tmp_path: Path, receiver: Receiver, clock: FakeClock
) -> None:
    client = await delivering_client(make_client)
    headers = await user_headers(client)
    await create_key(client, headers)  # no webhook yet: fanned out to nobody
    async with client.keystile.session_factory() as session:
        (event_id,) = await session.scalars(select(OutboxEvent.event_id))
    webhook = await add_webhook(client, headers, receiver.url, ["key.created"])

    output = await run(
        cli_on(tmp_path, database_url), "events", "replay", "--since", "5m", "--webhook", str(webhook["id"])
    )
    clock.advance(600)
    client.keystile.events.dispatcher.wake()
    (sent,) = await receiver.received(1)

    assert output.startswith("queued 1 deliveries of 1 events to 1 endpoint ")
    assert sent.webhook_id == event_id
    assert sent.json["type"] == "key.created"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        pytest.param(["--since", "yesterday"], "is neither ISO 8601", id="unreadable-since"),
        pytest.param(["--since", "1h", "--until", "soon"], "is neither ISO 8601", id="unreadable-until"),
        pytest.param(["--since", "1h", "--until", "2h"], "--since must be before --until", id="until-before-since"),
        pytest.param(["--since", "1h", "--webhook", "999"], "no webhook with id 999", id="unknown-webhook"),
    ],
)
def test_replay_with_a_bad_argument_exits_1_with_a_clear_message_and_queues_nothing(
    tmp_path: Path, sqlite_template: Path, args: list[str], message: str
) -> None:
    cli = Cli(tmp_path)
    shutil.copyfile(sqlite_template, cli.database)

    result = cli.run("events", "replay", *args)

    assert result.returncode == 1
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert cli.rows("SELECT id FROM webhook_deliveries") == []


@pytest.mark.process
@pytest.mark.postgres
def test_a_replayed_event_reaches_a_real_receiver_again_from_a_running_server(tmp_path: Path) -> None:
    url = backends.fresh_postgres_database(f"{backends.POSTGRES_DATABASE}_replay")
    env = {
        "KEYSTILE_DATABASE_URL": url,
        "KEYSTILE_SECRET_KEY": TEST_SECRET_KEY,
        "KEYSTILE_WEBHOOK_ALLOW_PRIVATE": "true",
        "KEYSTILE_WEBHOOK_POLL_SECONDS": "0.1",
    }
    with Receiver() as receiver, KeystileServer(env, cwd=tmp_path) as server:
        headers, _ = register_and_issue_key(server.url)
        webhook = add_webhook_over_http(server.url, headers, receiver.url)
        created = httpx.post(f"{server.url}/keys/", json={"name": "watched"}, headers=headers)
        assert created.status_code == 201
        (original,) = receiver.wait_for(1)
        wait_for_attempts(server.url, headers, webhook["id"], 1)

        cli = cli_on(tmp_path, url)
        output = cli.ok("events", "replay", "--since", "10m", "--webhook", str(webhook["id"]))
        received = receiver.wait_for(3)
        rows = wait_for_attempts(server.url, headers, webhook["id"], 3)

    # Both key.created events since then: the one sent before, and the one from before the webhook existed.
    assert output.startswith("queued 2 deliveries of 2 events to 1 endpoint ")
    again = [request for request in received[1:] if request.json["data"]["id"] == created.json()["id"]]
    assert [request.webhook_id for request in again] == [original.webhook_id]
    assert again[0].body == original.body
    assert verify_signature(webhook["secret"], again[0])
    assert [(row["attempt"], row["status_code"]) for row in rows] == [(1, 200)] * 3
