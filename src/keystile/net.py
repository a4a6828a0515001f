"""The client's address, believing `X-Forwarded-For` only from configured proxies."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from functools import lru_cache

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def parse_network(text: str) -> IPNetwork:
    """An address or CIDR block as a network; IPv4-mapped IPv6 (`::ffff:10.0.0.0/104`) becomes the IPv4 network it
    means, since client addresses are compared as IPv4 too. Zone ids (`fe80::1%eth0`) are refused: they name an
    interface of one host, not an address a client can come from. Raises ValueError."""
    if "%" in text:
        raise ValueError(f"zone ids are not allowed: {text[:64]!r}")
    network = ipaddress.ip_network(text.strip(), strict=False)
    mapped = network.network_address.ipv4_mapped if isinstance(network, ipaddress.IPv6Network) else None
    if mapped is not None and network.prefixlen >= 96:
        return ipaddress.IPv4Network((mapped, network.prefixlen - 96))
    return network


def parse_networks(cidrs: Sequence[str]) -> tuple[IPNetwork, ...]:
    return tuple(parse_network(cidr) for cidr in cidrs)


def parse_ip(text: str) -> IPAddress:
    """A client address given as text (the verify API's `ip`), IPv4-mapped IPv6 as IPv4; zone ids refused."""
    address = parse_address(text) if "%" not in text else None
    if address is None:
        raise ValueError("not an IP address")
    return address


@lru_cache(maxsize=4096)
def parse_address(text: str | None) -> IPAddress | None:
    # Cached: the same few peers and proxies send most requests, and ipaddress parsing is slow for the hot path.
    if not text:
        return None
    try:
        address = ipaddress.ip_address(text.strip())
    except ValueError:
        return None
    # A dual-stack socket reports IPv4 clients as ::ffff:a.b.c.d; they must match IPv4 allowlists and proxies.
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def in_networks(address: IPAddress, networks: Sequence[IPNetwork]) -> bool:
    return any(address.version == network.version and address in network for network in networks)


def client_address(
    peer: str | None, forwarded_for: str | None, trusted_proxies: Sequence[IPNetwork]
) -> IPAddress | None:
    """The socket peer, unless it is a trusted proxy: then the right-most `X-Forwarded-For` hop that is not one.

    Walking from the right matters: a client can put anything at the left of the header, but each trusted proxy
    appends the address it saw, so the first untrusted address from the right is the one a trusted proxy vouched for.
    """
    address = parse_address(peer)
    if address is None or not trusted_proxies or not forwarded_for:
        return address
    if not in_networks(address, trusted_proxies):
        return address
    for hop in reversed(forwarded_for.split(",")):
        hop_address = parse_address(hop)
        if hop_address is None:
            return address  # an unparseable hop: stop believing the header rather than guess
        if not in_networks(hop_address, trusted_proxies):
            return hop_address
        address = hop_address
    return address
