"""The connections under the upstream clients: pools, address policy, circuit breaker.

* Metadata (manifests, tag lists, tokens, blob ``HEAD``\\ s) and blob downloads have pools
  of their own, so a tag check never waits for a connection held by a long download, and
  a download waiting for a free connection is not a connect timeout.
* Requests to hosts other than an upstream's own (a CDN named by a redirect, a token
  realm on another host) go through pools whose resolver drops loopback, private and
  link-local addresses: the address checked is the address connected to, so a name that
  resolves to a public address for a check and to a private one for the connection
  (DNS rebinding) reaches nothing.
* A :class:`Breaker` per upstream stops asking an upstream that keeps failing for a
  while, so the cached answers go out at once.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Final

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver

from registry_mirror.upstream.errors import UpstreamUnavailable

__all__ = [
    "Breaker",
    "PrivateAddressRefused",
    "PublicAddressResolver",
    "Sessions",
    "is_public",
]

log = logging.getLogger(__name__)

#: Connections per host in each pool (aiohttp's default is unlimited; registry:2 keeps
#: Go's defaults). Blob downloads beyond this wait for a free connection.
POOL_PER_HOST: Final = 32
POOL_TOTAL: Final = 200
DNS_CACHE_TTL: Final = 300
METADATA_BUFFER: Final = 64 * 1024  # aiohttp's default
BLOB_BUFFER: Final = 256 * 1024  # a blob body buffered up to 512 KiB while a chunk is stored


def is_public(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """A globally routable unicast address (an IPv4-mapped IPv6 address as its IPv4)."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_global and not address.is_multicast


class PrivateAddressRefused(OSError):
    """A host outside the upstream resolved only to non-public addresses."""

    def __init__(self, host: str, addresses: list[str]) -> None:
        shown = ", ".join(addresses[:4]) or "no address"
        super().__init__(f"{host} resolves to the non-public address {shown}")
        self.host = host
        self.addresses = addresses


class PublicAddressResolver(AbstractResolver):
    """Resolves with ``inner`` and keeps only public addresses; none left is a
    :class:`PrivateAddressRefused` (which aiohttp raises as a connector error)."""

    def __init__(self, inner: AbstractResolver) -> None:
        self._inner = inner

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        public = []
        for result in results:
            try:
                address = ipaddress.ip_address(result["host"].partition("%")[0])
            except ValueError:
                continue
            if is_public(address):
                public.append(result)
        if not public:
            raise PrivateAddressRefused(host, [r["host"] for r in results])
        return public

    async def close(self) -> None:
        await self._inner.close()


ResolverFactory = Callable[[], AbstractResolver]


@dataclass(frozen=True, slots=True)
class Sessions:
    """The HTTP client sessions every upstream shares (each keeps its own credentials).

    ``guarded_*`` are for hosts other than an upstream's own when that upstream does not
    allow private addresses.
    """

    metadata: aiohttp.ClientSession
    blobs: aiohttp.ClientSession
    guarded_metadata: aiohttp.ClientSession
    guarded_blobs: aiohttp.ClientSession

    @classmethod
    def single(cls, session: aiohttp.ClientSession) -> Sessions:
        """One session for everything (tests, tools): no separate pools, no guard."""
        return cls(session, session, session, session)

    @classmethod
    def create(cls, user_agent: str, resolver: ResolverFactory = DefaultResolver) -> Sessions:
        """Four sessions on four connectors. Call in a running event loop; :meth:`close`."""

        def session(guarded: bool, read_bufsize: int = METADATA_BUFFER) -> aiohttp.ClientSession:
            inner = resolver()
            connector = aiohttp.TCPConnector(
                limit=POOL_TOTAL,
                limit_per_host=POOL_PER_HOST,
                ttl_dns_cache=DNS_CACHE_TTL,
                resolver=PublicAddressResolver(inner) if guarded else inner,
            )
            return aiohttp.ClientSession(
                connector=connector,
                # Manifests and blobs must arrive as their digest names them: ask for no
                # content coding (tokens and tag lists ask for gzip and are decoded).
                headers={"User-Agent": user_agent, "Accept-Encoding": "identity"},
                auto_decompress=False,
                # How much of a body may wait in memory before reading from the socket
                # pauses (twice this): a blob download keeps flowing while a chunk is
                # being written and hashed.
                read_bufsize=read_bufsize,
                # The environment's proxy variables are read once, in config, and applied
                # per request by the upstream client (with NO_PROXY).
                trust_env=False,
            )

        return cls(
            session(False),
            session(False, BLOB_BUFFER),
            session(True),
            session(True, BLOB_BUFFER),
        )

    async def close(self) -> None:
        closed: set[int] = set()
        for session in (self.metadata, self.blobs, self.guarded_metadata, self.guarded_blobs):
            if id(session) not in closed:
                closed.add(id(session))
                await session.close()


class Breaker:
    """A circuit breaker over an upstream's metadata requests.

    Closed: requests go out; ``threshold`` consecutive failures (unreachable, timing out,
    5xx) open it for ``base`` seconds. Open: requests fail at once with
    :class:`UpstreamUnavailable`. When the period is over, one request goes out as a probe
    (the others still fail at once): an answer closes the breaker, a failure opens it
    again for twice as long, up to ``cap``.
    """

    def __init__(
        self,
        name: str,
        *,
        threshold: int = 3,
        base: float = 5.0,
        cap: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self.threshold = threshold
        self.base = base
        self.cap = cap
        self._clock = clock
        self.failures = 0
        self.open_until: float | None = None
        self.period = base
        self._probing = False
        self._reason = ""
        # Wall-clock times (seconds since the epoch) of the last answer and the last
        # failure, and what failed: for the health endpoints and the metrics.
        self.last_success: float | None = None
        self.last_failure: float | None = None

    @property
    def is_open(self) -> bool:
        return self.open_until is not None

    @property
    def last_error(self) -> str:
        """Why the last failed request failed ("" before any failure)."""
        return self._reason

    @contextlib.contextmanager
    def guard(self) -> Iterator[None]:
        """Around one metadata request: refuses while open, records the outcome."""
        probe = self._admit()
        try:
            yield
        except UpstreamUnavailable as exc:
            self._failed(exc, probe)
            raise
        except BaseException:
            # Any other answer (404, 401, a bad body) came from a living upstream; a
            # cancelled request (the client left) says nothing either way.
            if probe:
                self._probing = False
            raise
        else:
            self._succeeded(probe)

    def _admit(self) -> bool:
        if self.open_until is None:
            return False
        now = self._clock()
        if now < self.open_until or self._probing:
            wait = max(0.0, self.open_until - now)
            raise UpstreamUnavailable(
                f"{self.name} is marked down for {wait:.0f}s more"
                f" (after {self.failures} failures: {self._reason})"
            )
        self._probing = True
        return True

    def _failed(self, exc: UpstreamUnavailable, probe: bool) -> None:
        self.failures += 1
        self.last_failure = time.time()
        self._reason = exc.message[:200]
        if probe:
            self._probing = False
            self.period = min(self.period * 2, self.cap)
        elif self.open_until is not None or self.failures < self.threshold:
            return
        self.open_until = self._clock() + self.period
        log.warning(
            "%s marked down for %.0fs after %d failures (%s): cached content is served",
            self.name,
            self.period,
            self.failures,
            self._reason,
        )

    def _succeeded(self, probe: bool) -> None:
        self.last_success = time.time()
        if self.open_until is not None and probe:
            log.warning("%s answers again", self.name)
        if probe or self.open_until is None:
            self.failures = 0
            self.open_until = None
            self.period = self.base
            self._probing = False
