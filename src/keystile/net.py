"""The client's address, believing `X-Forwarded-For` only from configured proxies."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from functools import lru_cache

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def parse_networks(cidrs: Sequence[str]) -> tuple[IPNetwork, ...]:
    return tuple(ipaddress.ip_network(cidr, strict=False) for cidr in cidrs)


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
