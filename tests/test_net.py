"""keystile.net: the client's address is the socket peer, or, behind trusted proxies, the right-most
`X-Forwarded-For` hop that is not one of them."""

from __future__ import annotations

import ipaddress

import pytest

from keystile.net import client_address, in_networks, parse_address, parse_networks

PROXIES = parse_networks(["10.0.0.0/8", "fd00::/8"])


@pytest.mark.parametrize(
    ("peer", "forwarded_for", "trusted", "expected"),
    [
        pytest.param("203.0.113.1", None, PROXIES, "203.0.113.1", id="peer-without-header"),
        pytest.param("203.0.113.1", "198.51.100.1", (), "203.0.113.1", id="no-trusted-proxies"),
        pytest.param("203.0.113.1", "198.51.100.1", PROXIES, "203.0.113.1", id="untrusted-peer-spoofing"),
        pytest.param("10.0.0.1", None, PROXIES, "10.0.0.1", id="trusted-peer-without-header"),
        pytest.param("10.0.0.1", "", PROXIES, "10.0.0.1", id="trusted-peer-empty-header"),
        pytest.param("10.0.0.1", "198.51.100.1", PROXIES, "198.51.100.1", id="trusted-peer-one-hop"),
        pytest.param("10.0.0.1", "198.51.100.1, 10.0.0.2", PROXIES, "198.51.100.1", id="two-trusted-proxies"),
        pytest.param("10.0.0.1", "6.6.6.6, 198.51.100.1", PROXIES, "198.51.100.1", id="right-most-untrusted"),
        pytest.param("10.0.0.1", "10.0.0.3,10.0.0.2", PROXIES, "10.0.0.3", id="all-hops-trusted-left-most"),
        pytest.param("10.0.0.1", " 198.51.100.1 ", PROXIES, "198.51.100.1", id="spaces-around-hop"),
        pytest.param("10.0.0.1", "garbage", PROXIES, "10.0.0.1", id="unparseable-hop"),
        pytest.param("10.0.0.1", "198.51.100.1, garbage", PROXIES, "10.0.0.1", id="unparseable-right-most-hop"),
        pytest.param("10.0.0.1", "garbage, 10.0.0.2", PROXIES, "10.0.0.2", id="unparseable-behind-trusted-hop"),
        pytest.param("10.0.0.1", "198.51.100.1:443", PROXIES, "10.0.0.1", id="hop-with-port-not-believed"),
        pytest.param("fd00::1", "2001:db8::7", PROXIES, "2001:db8::7", id="ipv6-proxy-and-client"),
        pytest.param("fd00::1", "198.51.100.1, fd00::2", PROXIES, "198.51.100.1", id="ipv4-client-via-ipv6-proxies"),
        pytest.param("2001:db8::1", "198.51.100.1", PROXIES, "2001:db8::1", id="untrusted-ipv6-peer"),
        pytest.param(None, "198.51.100.1", PROXIES, None, id="no-peer"),
        pytest.param("testclient", "198.51.100.1", PROXIES, None, id="peer-not-an-address"),
    ],
)
def test_client_address_believes_forwarded_for_only_from_trusted_proxies(
    peer: str | None, forwarded_for: str | None, trusted: tuple[ipaddress.IPv4Network, ...], expected: str | None
) -> None:
    address = client_address(peer, forwarded_for, trusted)

    assert address == (ipaddress.ip_address(expected) if expected is not None else None)


# parse_networks, parse_address, in_networks


def test_parse_networks_accepts_addresses_and_networks_with_host_bits_set() -> None:
    assert parse_networks(["10.1.2.3/8", "192.0.2.7", "2001:db8::1/32"]) == (
        ipaddress.ip_network("10.0.0.0/8"),
        ipaddress.ip_network("192.0.2.7/32"),
        ipaddress.ip_network("2001:db8::/32"),
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("203.0.113.9", "203.0.113.9", id="ipv4"),
        pytest.param(" 203.0.113.9 ", "203.0.113.9", id="padded"),
        pytest.param("2001:db8::1", "2001:db8::1", id="ipv6"),
        pytest.param("::ffff:10.1.2.3", "10.1.2.3", id="ipv4-mapped-ipv6-is-ipv4"),
        pytest.param("::ffff:a01:203", "10.1.2.3", id="ipv4-mapped-in-hex"),
        pytest.param("::10.1.2.3", "::a01:203", id="ipv4-compatible-stays-ipv6"),
        pytest.param(None, None, id="none"),
        pytest.param("", None, id="empty"),
        pytest.param("testclient", None, id="hostname"),
        pytest.param("10.1.2.3:443", None, id="with-port"),
        pytest.param("10.1.2.300", None, id="octet-out-of-range"),
    ],
)
def test_parse_address(text: str | None, expected: str | None) -> None:
    expected_address = ipaddress.ip_address(expected) if expected is not None else None

    address = parse_address(text)

    assert address == expected_address
    assert type(address) is type(expected_address)


@pytest.mark.parametrize(
    ("address", "inside"),
    [
        pytest.param("10.255.255.255", True, id="ipv4-inside"),
        pytest.param("11.0.0.0", False, id="ipv4-outside"),
        pytest.param("fd12::1", True, id="ipv6-inside"),
        pytest.param("fe00::1", False, id="ipv6-outside"),
        pytest.param("::ffff:10.0.0.1", False, id="unparsed-ipv4-mapped-is-another-version"),
    ],
)
def test_in_networks_matches_only_networks_of_the_same_version(address: str, inside: bool) -> None:
    assert in_networks(ipaddress.ip_address(address), PROXIES) is inside


def test_in_networks_of_no_networks_is_false() -> None:
    assert in_networks(ipaddress.ip_address("10.0.0.1"), ()) is False


# IPv4 clients seen through a dual-stack socket


@pytest.mark.parametrize(
    ("peer", "forwarded_for", "expected"),
    [
        pytest.param("::ffff:10.0.0.1", "198.51.100.1", "198.51.100.1", id="mapped-peer-is-a-trusted-ipv4-proxy"),
        pytest.param("::ffff:203.0.113.1", "198.51.100.1", "203.0.113.1", id="mapped-untrusted-peer-spoofing"),
        pytest.param("::ffff:203.0.113.1", None, "203.0.113.1", id="mapped-peer-without-header"),
        pytest.param("10.0.0.1", "198.51.100.1, ::ffff:10.0.0.2", "198.51.100.1", id="mapped-trusted-hop-skipped"),
        pytest.param("10.0.0.1", "::ffff:198.51.100.1", "198.51.100.1", id="mapped-client-hop-is-ipv4"),
    ],
)
def test_ipv4_mapped_ipv6_addresses_are_treated_as_ipv4(peer: str, forwarded_for: str | None, expected: str) -> None:
    address = client_address(peer, forwarded_for, PROXIES)

    assert address == ipaddress.IPv4Address(expected)
