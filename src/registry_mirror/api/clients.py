"""Who the client of a request is: the peer's address, or behind trusted proxies the
first hop of ``X-Forwarded-For`` that is not one; IPv4-mapped IPv6 as IPv4. A chain that
cannot be believed names :data:`UNKNOWN_CLIENT`, never the proxy."""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Iterable
from typing import Final

from aiohttp import web

__all__ = [
    "MAX_FORWARDED_HOPS",
    "UNKNOWN_CLIENT",
    "Address",
    "ClientAddresses",
    "Network",
    "in_networks",
    "networks",
    "parse_address",
]

# Trusted proxies walked from the right of X-Forwarded-For; a longer trusted chain is
# not believed (the client is then UNKNOWN_CLIENT).
MAX_FORWARDED_HOPS: Final = 16
# The client of a request whose forwarded chain cannot be believed (an unparsable hop,
# too many hops): in no network, so an allow list refuses it; one bucket for all of them.
UNKNOWN_CLIENT: Final = "unknown"
_MAX_HOP_LENGTH: Final = 64

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def networks(specs: Iterable[str]) -> list[Network]:
    """CIDR networks as configured (``10.0.0.0/8``, ``2001:db8::/32``, one address)."""
    return [ipaddress.ip_network(spec, strict=False) for spec in specs]


def parse_address(text: str) -> Address | None:
    """An address as a peer or a proxy writes it: ``192.0.2.7``, ``2001:db8::1``, with a
    port (``192.0.2.7:5123``, ``[2001:db8::1]:443``); IPv4-mapped IPv6 (a dual-stack
    socket's view of an IPv4 peer) as IPv4. None if it is not an address."""
    text = text.strip()
    if len(text) > _MAX_HOP_LENGTH:
        return None
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or (rest and not (rest[:1] == ":" and rest[1:].isdigit())):
            return None
    elif text.count(":") == 1:
        host, _, port = text.partition(":")
        if not port.isdigit():
            return None
    else:
        host = text
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


@functools.lru_cache(maxsize=4096)
def _peer_name(remote: str) -> str:
    """A peer's address as the client's name (IPv4-mapped IPv6 as IPv4). Cached: every
    request asks, and a connection makes many requests (a few hundred KiB at most)."""
    peer = parse_address(remote)
    return str(peer) if peer is not None else (remote or UNKNOWN_CLIENT)


def in_networks(address: str, among: list[Network]) -> bool:
    """Whether a client's address is in one of the networks (a name that is no address,
    such as :data:`UNKNOWN_CLIENT`, is in none)."""
    ip = parse_address(address)
    return ip is not None and any(ip in network for network in among)


class ClientAddresses:
    """The client of each request, believing ``X-Forwarded-For`` from the trusted proxies
    only (none: the peer is the client)."""

    def __init__(self, trusted_proxies: Iterable[str]) -> None:
        self.trusted = networks(trusted_proxies)

    def _trusted(self, address: Address) -> bool:
        return any(address in network for network in self.trusted)

    def from_trusted_proxy(self, request: web.BaseRequest) -> bool:
        """Does the request come from one of the trusted proxies (its peer)?"""
        if not self.trusted:
            return False
        peer = parse_address(request.remote or "")
        return peer is not None and self._trusted(peer)

    def client(self, request: web.Request) -> str:
        """The client's address. From a trusted proxy, every ``X-Forwarded-For`` line
        (joined, as one list) is walked from the right: the first hop that is not a
        trusted proxy is the client. A hop that is not an address, or more than
        ``MAX_FORWARDED_HOPS`` trusted hops, and the client is :data:`UNKNOWN_CLIENT`
        (never the proxy); a chain of trusted proxies only ends at its leftmost hop."""
        remote = request.remote or ""
        if not self.trusted:
            return _peer_name(remote)
        peer = parse_address(remote)
        if peer is None or not self._trusted(peer):
            return _peer_name(remote)
        lines = request.headers.getall("X-Forwarded-For", [])
        if not lines:
            return str(peer)
        # The rightmost hops only: a chain is bounded by the header limits, the walk by this.
        hops = ",".join(lines).rsplit(",", MAX_FORWARDED_HOPS)
        walked = hops[-MAX_FORWARDED_HOPS:]
        client = str(peer)
        for hop in reversed(walked):
            if not hop.strip():
                continue  # an empty element names nobody (a proxy joining an empty line)
            address = parse_address(hop)
            if address is None:
                return UNKNOWN_CLIENT
            if not self._trusted(address):
                return str(address)
            client = str(address)
        if len(hops) > MAX_FORWARDED_HOPS and hops[0].strip():
            return UNKNOWN_CLIENT  # more trusted hops than any real chain has
        return client
