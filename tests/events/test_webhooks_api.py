"""/webhooks: owner-scoped CRUD, the secret shown once and sealed at rest, and URLs refused for where they point."""

from __future__ import annotations

import socket

import pytest
from sqlalchemy import select

from keystile.webhooks.models import WebhookEndpoint
from tests.conftest import MakeClient
from tests.events.helpers import add_webhook, attempts_at_least
from tests.events.receiver import Receiver
from tests.helpers import create_key, user_headers

PUBLIC_URL = "https://93.184.215.14/hook"  # an IP literal: no DNS needed to see that it is public


def loopback_hostname() -> str:
    """A name other than `localhost` that this machine resolves to loopback only."""
    for name in ("vm", "runsc", socket.gethostname(), "ip6-localhost", "localhost.localdomain"):
        try:
            addresses = {info[4][0] for info in socket.getaddrinfo(name, 80)}
        except OSError:
            continue
        if addresses and all(address in ("127.0.0.1", "::1") or address.startswith("127.") for address in addresses):
            return name
    pytest.skip("no hostname besides localhost resolves to loopback here")


async def test_a_webhook_is_created_with_its_secret_once_and_only_a_sealed_copy_is_stored(
    make_client: MakeClient,
) -> None:
    client = await make_client()
    headers = await user_headers(client)

    created = await client.post(
        "/webhooks", json={"url": PUBLIC_URL, "events": ["key.created"], "description": "ops"}, headers=headers
    )
    body = created.json()
    shown = await client.get(f"/webhooks/{body['id']}", headers=headers)
    listed = await client.get("/webhooks", headers=headers)
    async with client.keystile.session_factory() as session:
        stored = (await session.scalars(select(WebhookEndpoint))).one()

    assert created.status_code == 201
    assert created.headers["cache-control"] == "no-store"
    assert set(body) == {"id", "url", "events", "description", "enabled", "created_at", "secret"}
    assert body["secret"].startswith("whsec_")
    assert shown.json() == {name: value for name, value in body.items() if name != "secret"}
    assert [item["id"] for item in listed.json()] == [body["id"]]
    assert body["secret"] not in stored.sealed_secret
    assert client.keystile.events.secrets.open(stored.sealed_secret) == body["secret"]


async def test_another_users_webhook_is_not_found_and_unchanged(make_client: MakeClient) -> None:
    client = await make_client()
    alice = await user_headers(client, "alice@example.com")
    bob = await user_headers(client, "bob@example.com")
    webhook = await add_webhook(client, alice, PUBLIC_URL)

    answers = [
        await client.get(f"/webhooks/{webhook['id']}", headers=bob),
        await client.patch(f"/webhooks/{webhook['id']}", json={"enabled": False}, headers=bob),
        await client.delete(f"/webhooks/{webhook['id']}", headers=bob),
        await client.get(f"/webhooks/{webhook['id']}/deliveries", headers=bob),
        await client.post(f"/webhooks/{webhook['id']}/test", headers=bob),
    ]

    assert [answer.status_code for answer in answers] == [404] * 5
    assert (await client.get("/webhooks", headers=bob)).json() == []
    assert (await client.get(f"/webhooks/{webhook['id']}", headers=alice)).json()["enabled"] is True


async def test_a_webhook_is_changed_and_deleted(make_client: MakeClient) -> None:
    client = await make_client()
    headers = await user_headers(client)
    webhook = await add_webhook(client, headers, PUBLIC_URL)

    changed = await client.patch(
        f"/webhooks/{webhook['id']}", json={"events": ["key.revoked"], "enabled": False}, headers=headers
    )
    deleted = await client.delete(f"/webhooks/{webhook['id']}", headers=headers)

    assert changed.status_code == 200
    assert (changed.json()["events"], changed.json()["enabled"]) == (["key.revoked"], False)
    assert deleted.status_code == 204
    assert (await client.get(f"/webhooks/{webhook['id']}", headers=headers)).status_code == 404


@pytest.mark.parametrize(
    "body",
    [
        pytest.param({"url": "ftp://example.com/", "events": ["key.created"]}, id="not-http"),
        pytest.param({"url": "https://u:p@example.com/", "events": ["key.created"]}, id="credentials"),
        pytest.param({"url": PUBLIC_URL, "events": ["key.exploded"]}, id="unknown-event"),
        pytest.param({"url": PUBLIC_URL, "events": []}, id="no-events"),
        pytest.param({"url": PUBLIC_URL, "events": ["key.created"], "secret": "mine"}, id="unknown-field"),
        pytest.param({"url": "not a url", "events": ["key.created"]}, id="garbage"),
    ],
)
async def test_an_invalid_webhook_is_422_and_nothing_is_stored(
    make_client: MakeClient, body: dict[str, object]
) -> None:
    client = await make_client()
    headers = await user_headers(client)

    response = await client.post("/webhooks", json=body, headers=headers)

    assert response.status_code == 422, response.text
    assert (await client.get("/webhooks", headers=headers)).json() == []


@pytest.mark.parametrize(
    "url",
    [
        pytest.param("http://127.0.0.1:9000/hook", id="loopback-v4"),
        pytest.param("http://localhost/hook", id="localhost"),
        pytest.param("http://169.254.169.254/latest/meta-data/", id="cloud-metadata"),
        pytest.param("http://[::1]/hook", id="loopback-v6"),
        pytest.param("http://10.0.0.1/hook", id="private"),
        pytest.param("http://[::ffff:127.0.0.1]/hook", id="ipv4-mapped-loopback"),
        pytest.param("http://0.0.0.0/hook", id="unspecified"),
        pytest.param("http://224.0.0.1/hook", id="multicast"),
        pytest.param("loopback-name", id="name-resolving-to-loopback"),
    ],
)
async def test_a_url_pointing_inside_is_refused_with_422_at_creation_and_on_change(
    make_client: MakeClient, url: str
) -> None:
    if url == "loopback-name":
        url = f"http://{loopback_hostname()}/hook"
    client = await make_client()
    headers = await user_headers(client)
    webhook = await add_webhook(client, headers, PUBLIC_URL)

    created = await client.post("/webhooks", json={"url": url, "events": ["key.created"]}, headers=headers)
    changed = await client.patch(f"/webhooks/{webhook['id']}", json={"url": url}, headers=headers)

    assert created.status_code == 422, created.text
    assert "KEYSTILE_WEBHOOK_ALLOW_PRIVATE" in created.json()["detail"][0]["msg"]
    assert changed.status_code == 422
    assert [item["url"] for item in (await client.get("/webhooks", headers=headers)).json()] == [PUBLIC_URL]


async def test_allow_private_accepts_loopback_receivers(make_client: MakeClient) -> None:
    client = await make_client(webhook_allow_private=True)
    headers = await user_headers(client)

    response = await client.post(
        "/webhooks", json={"url": "http://127.0.0.1:9/hook", "events": ["key.created"]}, headers=headers
    )

    assert response.status_code == 201


async def test_a_private_address_is_refused_again_at_delivery_time(make_client: MakeClient) -> None:
    """An endpoint stored while private receivers were allowed (or whose name resolves differently now) is checked
    again before each attempt: nothing reaches the receiver, and the attempt says why."""
    with Receiver() as receiver:
        allowing = await make_client(webhook_allow_private=True, webhook_poll_seconds=60)  # never delivers here
        headers = await user_headers(allowing)
        webhook = await add_webhook(allowing, headers, receiver.url, ["key.created"])
        client = await make_client(webhook_poll_seconds=0.05)  # the same database, private receivers refused

        await create_key(client, headers)
        (row,) = await attempts_at_least(client, headers, webhook["id"], 1)

        assert row["status_code"] is None
        assert "loopback" in row["error"]
        assert receiver.requests == []
