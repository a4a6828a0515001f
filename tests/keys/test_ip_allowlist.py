"""IP allowlists (issue 3): the client address is the socket peer, or a trusted proxy's `X-Forwarded-For` hop."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import pytest
from sqlalchemy import select

from keystile.audit.models import AuditEvent
from tests.conftest import MakeClient
from tests.helpers import KeystileClient, admin_headers, create_key, key_count, stored_key, user_headers, verify

NOT_ALLOWED = {"detail": "API key not allowed from this address"}


@asynccontextmanager
async def peer_client(client: KeystileClient, host: str) -> AsyncIterator[httpx.AsyncClient]:
    """A second client on the same running app whose requests come from the socket peer `host`."""
    app = client._transport.app  # type: ignore[attr-defined]
    transport = httpx.ASGITransport(app=app, client=(host, 40_000))
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as peer:
        yield peer


async def export_from(client: KeystileClient, host: str, raw: str, forwarded_for: str | None = None) -> httpx.Response:
    headers = {"X-API-Key": raw}
    if forwarded_for is not None:
        headers["X-Forwarded-For"] = forwarded_for
    async with peer_client(client, host) as peer:
        return await peer.get("/data/export", headers=headers)


async def use_count(client: KeystileClient, pk: int) -> int:
    await client.keystile.usage.flush()
    return (await stored_key(client, pk)).use_count


async def audit_ips(client: KeystileClient, api_key_id: int) -> list[str | None]:
    async with client.keystile.session_factory() as session:
        return list((await session.scalars(select(AuditEvent.ip).where(AuditEvent.api_key_id == api_key_id))).all())


# The socket peer against the allowlist


@pytest.mark.parametrize(
    ("allowlist", "peer", "allowed"),
    [
        pytest.param(["10.1.2.3"], "10.1.2.3", True, id="ipv4-exact"),
        pytest.param(["10.1.2.3"], "10.1.2.4", False, id="ipv4-exact-neighbour"),
        pytest.param(["10.0.0.0/8"], "10.255.0.1", True, id="ipv4-cidr"),
        pytest.param(["10.0.0.0/8"], "11.0.0.1", False, id="ipv4-outside-cidr"),
        pytest.param(["10.1.2.0/24"], "10.1.2.255", True, id="ipv4-cidr-last-address"),
        pytest.param(["10.1.2.0/24"], "10.1.3.0", False, id="ipv4-just-past-cidr"),
        pytest.param(["192.168.0.0/16", "10.1.2.3"], "10.1.2.3", True, id="second-entry-matches"),
        pytest.param(["2001:db8::5"], "2001:db8::5", True, id="ipv6-exact"),
        pytest.param(["2001:db8::5"], "2001:db8::6", False, id="ipv6-exact-neighbour"),
        pytest.param(["2001:db8::/32"], "2001:db8:ffff::1", True, id="ipv6-cidr"),
        pytest.param(["2001:db8::/32"], "2001:db9::1", False, id="ipv6-outside-cidr"),
        pytest.param(["10.0.0.0/8"], "2001:db8::1", False, id="ipv6-peer-ipv4-list"),
        pytest.param(["::/0"], "10.1.2.3", False, id="ipv4-peer-ipv6-list"),
        pytest.param(["0.0.0.0/0"], "203.0.113.9", True, id="ipv4-any"),
        pytest.param([], "203.0.113.9", True, id="no-allowlist"),
    ],
)
async def test_socket_peer_is_checked_against_the_allowlist(
    client: KeystileClient, allowlist: list[str], peer: str, allowed: bool
) -> None:
    created = await create_key(client, await user_headers(client), ip_allowlist=allowlist)

    response = await export_from(client, peer, created["key"])

    if allowed:
        assert response.status_code == 200, response.text
        assert response.json()["data"] == []
    else:
        assert response.status_code == 403, response.text
        assert response.json() == NOT_ALLOWED
    assert await use_count(client, created["id"]) == (1 if allowed else 0)


async def test_default_in_process_client_is_127_0_0_1(client: KeystileClient) -> None:
    headers = await user_headers(client)
    loopback = await create_key(client, headers, ip_allowlist=["127.0.0.1"])
    elsewhere = await create_key(client, headers, ip_allowlist=["10.0.0.0/8"])

    allowed = await client.get("/data/export", headers={"X-API-Key": loopback["key"]})
    refused = await client.get("/data/export", headers={"X-API-Key": elsewhere["key"]})

    assert allowed.status_code == 200
    assert refused.status_code == 403
    assert refused.json() == NOT_ALLOWED


async def test_allowlist_set_by_patch_applies_to_the_next_request(client: KeystileClient) -> None:
    headers = await user_headers(client)
    created = await create_key(client, headers)
    assert (await export_from(client, "10.1.2.3", created["key"])).status_code == 200

    patched = await client.patch(f"/keys/{created['id']}", json={"ip_allowlist": ["192.0.2.0/24"]}, headers=headers)
    assert patched.status_code == 200, patched.text
    assert (await stored_key(client, created["id"])).ip_allowlist == ["192.0.2.0/24"]

    assert (await export_from(client, "10.1.2.3", created["key"])).status_code == 403
    assert (await export_from(client, "192.0.2.77", created["key"])).status_code == 200
    cleared = await client.patch(f"/keys/{created['id']}", json={"ip_allowlist": []}, headers=headers)
    assert cleared.status_code == 200
    assert (await export_from(client, "10.1.2.3", created["key"])).status_code == 200


# X-Forwarded-For


@pytest.mark.parametrize(
    ("forwarded_for", "allowed"),
    [
        pytest.param("203.0.113.7", True, id="single-hop-allowed"),
        pytest.param("198.51.100.1", False, id="single-hop-refused"),
        pytest.param("203.0.113.7, 127.0.0.2", True, id="second-trusted-proxy-skipped"),
        pytest.param("198.51.100.1, 203.0.113.7", True, id="left-spoof-ignored"),
        pytest.param("203.0.113.7, 198.51.100.1", False, id="right-most-untrusted-hop-decides"),
        pytest.param("  203.0.113.7  ", True, id="whitespace"),
        pytest.param("not-an-ip", False, id="unparseable-hop-falls-back-to-the-peer"),
        pytest.param("", False, id="empty-header-is-the-peer"),
    ],
)
async def test_forwarded_for_from_a_trusted_proxy_names_the_client(
    make_client: MakeClient, forwarded_for: str, allowed: bool
) -> None:
    client = await make_client(trusted_proxies=["127.0.0.0/8"])
    created = await create_key(client, await user_headers(client), ip_allowlist=["203.0.113.0/24"])

    response = await client.get("/data/export", headers={"X-API-Key": created["key"], "X-Forwarded-For": forwarded_for})

    assert response.status_code == (200 if allowed else 403), response.text
    if not allowed:
        assert response.json() == NOT_ALLOWED


async def test_trusted_proxy_without_forwarded_for_is_itself_the_client(make_client: MakeClient) -> None:
    client = await make_client(trusted_proxies=["127.0.0.0/8"])
    headers = await user_headers(client)
    proxy_only = await create_key(client, headers, ip_allowlist=["127.0.0.1"])
    clients_only = await create_key(client, headers, ip_allowlist=["203.0.113.0/24"])

    assert (await client.get("/data/export", headers={"X-API-Key": proxy_only["key"]})).status_code == 200
    assert (await client.get("/data/export", headers={"X-API-Key": clients_only["key"]})).status_code == 403


async def test_forwarded_for_over_ipv6_proxies(make_client: MakeClient) -> None:
    client = await make_client(trusted_proxies=["fd00::/8"])
    created = await create_key(client, await user_headers(client), ip_allowlist=["2001:db8::/32"])

    allowed = await export_from(client, "fd00::1", created["key"], "2001:db8::42, fd00::2")
    refused = await export_from(client, "fd00::1", created["key"], "2001:db9::42")

    assert allowed.status_code == 200, allowed.text
    assert refused.status_code == 403
    assert refused.json() == NOT_ALLOWED


@pytest.mark.parametrize(
    "trusted_proxies",
    [
        pytest.param([], id="no-trusted-proxies"),
        pytest.param(["10.0.0.0/8"], id="peer-not-among-them"),
    ],
)
async def test_spoofed_forwarded_for_from_an_untrusted_peer_is_ignored(
    make_client: MakeClient, trusted_proxies: list[str]
) -> None:
    client = await make_client(trusted_proxies=trusted_proxies)
    headers = await user_headers(client)
    for_spoofer = await create_key(client, headers, ip_allowlist=["203.0.113.0/24"])
    for_peer = await create_key(client, headers, ip_allowlist=["198.51.100.9"])

    spoofed = await export_from(client, "198.51.100.9", for_spoofer["key"], "203.0.113.7")
    honest = await export_from(client, "198.51.100.9", for_peer["key"], "203.0.113.7")

    assert spoofed.status_code == 403
    assert spoofed.json() == NOT_ALLOWED
    assert honest.status_code == 200, honest.text
    assert await use_count(client, for_spoofer["id"]) == 0
    assert await use_count(client, for_peer["id"]) == 1


async def test_audit_records_the_forwarded_client_address(make_client: MakeClient) -> None:
    client = await make_client(trusted_proxies=["127.0.0.0/8"])
    headers = await user_headers(client) | {"X-Forwarded-For": "203.0.113.7"}

    created = await create_key(client, headers)

    assert await audit_ips(client, created["id"]) == ["203.0.113.7"]


async def test_spoofed_forwarded_for_does_not_reach_the_audit_log(client: KeystileClient) -> None:
    headers = await user_headers(client) | {"X-Forwarded-For": "203.0.113.7"}

    created = await create_key(client, headers)

    assert await audit_ips(client, created["id"]) == ["127.0.0.1"]


async def test_ipv4_mapped_ipv6_peer_matches_an_ipv4_allowlist(client: KeystileClient) -> None:
    created = await create_key(client, await user_headers(client), ip_allowlist=["10.0.0.0/8"])

    response = await export_from(client, "::ffff:10.1.2.3", created["key"])

    assert response.status_code == 200, response.text


@pytest.mark.parametrize(
    ("entry", "peer"),
    [
        pytest.param("::ffff:127.0.0.1", "127.0.0.1", id="mapped-address-entry-admits-the-ipv4-peer"),
        pytest.param("::ffff:10.0.0.0/104", "10.2.3.4", id="mapped-block-entry-admits-an-ipv4-peer-in-it"),
        pytest.param("10.0.0.0/8", "::ffff:10.2.3.4", id="ipv4-block-admits-a-mapped-peer"),
    ],
)
async def test_ipv4_mapped_entries_and_peers_are_compared_as_ipv4(
    client: KeystileClient, entry: str, peer: str
) -> None:
    created = await create_key(client, await user_headers(client), ip_allowlist=[entry])

    response = await export_from(client, peer, created["key"])

    assert response.status_code == 200, response.text


async def test_verify_ip_given_as_ipv4_mapped_ipv6_matches_an_ipv4_block(client: KeystileClient) -> None:
    admin = await admin_headers(client)
    created = await create_key(client, await user_headers(client), ip_allowlist=["10.0.0.0/8"])

    body = await verify(client, admin, created["key"], ip="::ffff:10.2.3.4")

    assert body["code"] == "VALID"


@pytest.mark.parametrize("entry", ["fe80::1%eth0", "fe80::%1/64"])
async def test_an_allowlist_entry_with_a_zone_id_is_422_and_nothing_is_stored(
    client: KeystileClient, entry: str
) -> None:
    headers = await user_headers(client)

    response = await client.post("/keys/", json={"name": "zoned", "ip_allowlist": [entry]}, headers=headers)

    assert response.status_code == 422
    assert await key_count(client) == 0


async def test_repeated_allowlist_entries_are_stored_once(client: KeystileClient) -> None:
    created = await create_key(
        client, await user_headers(client), ip_allowlist=["10.0.0.1", "10.0.0.1/32", "::ffff:10.0.0.1", "10.0.0.2"]
    )

    assert created["ip_allowlist"] == ["10.0.0.1/32", "10.0.0.2/32"]
    assert (await stored_key(client, created["id"])).ip_allowlist == ["10.0.0.1/32", "10.0.0.2/32"]
