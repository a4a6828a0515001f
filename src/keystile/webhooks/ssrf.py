"""Where webhooks may not go: loopback, private, link-local, unspecified, multicast and reserved addresses (SSRF).

A webhook URL is chosen by a user but fetched by the server, from inside its network: without this check anyone
with an account could make keystile POST to `http://169.254.169.254/` (cloud metadata) or to services that trust
their own network. Names are resolved with the event loop's `getaddrinfo` (never blocking the loop) and every
address they resolve to must be public: one private address is enough to refuse, since the connection could use it.

The check runs when an endpoint is created or changed (422) and again before every delivery, because DNS can change
between the two; the delivery then connects to the very address that was checked (`Destination`), so a name that
resolves differently a moment later (DNS rebinding) cannot slip through. `KEYSTILE_WEBHOOK_ALLOW_PRIVATE=true` turns
all of this off, for receivers on the same host or network.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from dataclasses import dataclass

import httpx

from keystile.net import IPAddress

# NAT64's well-known prefix (RFC 6052) carries an IPv4 address in its last 32 bits.
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")


class UnsafeURLError(ValueError):
    """A webhook URL keystile will not send to: the message says why, without echoing the URL."""


def _embedded_ipv4(address: IPAddress) -> IPAddress:
    """The IPv4 address an IPv6 one stands for (IPv4-mapped, 6to4, NAT64), else the address itself."""
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return address.ipv4_mapped
        if address.sixtofour is not None:
            return address.sixtofour
        if address in _NAT64:
            return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return address


def refusal(address: IPAddress) -> str | None:
    """What kind of non-public address this is, or None for a public one."""
    address = _embedded_ipv4(address)
    for kind in ("loopback", "unspecified", "link_local", "multicast", "private", "reserved"):
        if getattr(address, f"is_{kind}"):
            return kind.replace("_", "-")
    if not address.is_global:  # e.g. 100.64.0.0/10, shared carrier-grade NAT space
        return "non-global"
    return None


async def resolve(host: str, port: int) -> list[IPAddress]:
    """Every address `host` resolves to (an IP literal is itself), without blocking the event loop."""
    try:
        return [ipaddress.ip_address(host.strip("[]"))]
    except ValueError:
        pass
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as error:
        raise UnsafeURLError("the URL's host does not resolve") from error
    addresses: list[IPAddress] = []
    for _family, _type, _proto, _name, sockaddr in infos:
        address = ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])
        if address not in addresses:
            addresses.append(address)
    return addresses


async def public_addresses(url: httpx.URL) -> list[IPAddress]:
    """The addresses of the URL's host, if all are public; else UnsafeURLError naming the kind of address."""
    addresses = await resolve(url.host, url.port or (443 if url.scheme == "https" else 80))
    if not addresses:
        raise UnsafeURLError("the URL's host does not resolve")
    for address in addresses:
        kind = refusal(address)
        if kind is not None:
            raise UnsafeURLError(
                f"the URL's host is or resolves to a {kind} address ({address}); "
                "set KEYSTILE_WEBHOOK_ALLOW_PRIVATE=true to allow receivers on private networks"
            )
    return addresses


@dataclass(frozen=True, slots=True)
class Destination:
    """Where a delivery connects: the URL with its host replaced by a checked address, the original `Host` header,
    and for https the name TLS must verify (SNI)."""

    url: httpx.URL
    host_header: str | None = None
    sni_hostname: str | None = None


async def destination(url: str, *, allow_private: bool) -> Destination:
    parsed = httpx.URL(url)
    if allow_private:
        return Destination(parsed)
    address = (await public_addresses(parsed))[0]
    host_header = parsed.netloc.decode("ascii")  # host[:port], as the client would have sent it
    sni = parsed.host if parsed.scheme == "https" else None
    return Destination(parsed.copy_with(host=str(address)), host_header=host_header, sni_hostname=sni)
