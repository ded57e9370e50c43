"""Per-client limits, keyed by address (an IPv6 client by its network): a token bucket
of requests, concurrent downloads, distinct repositories per window, failed logins; in
a table bounded in memory. Exceeding one is a 429 with ``Retry-After``."""

from __future__ import annotations

import ipaddress
import math
import time
from array import array
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Final

from registry_mirror.api.clients import parse_address
from registry_mirror.api.errors import RegistryError

__all__ = [
    "CLIENT_BYTES",
    "MAX_TRACKED_CLIENTS",
    "REPOSITORY_BYTES",
    "TABLE_BUDGET",
    "Limiter",
    "too_many",
]

MAX_TRACKED_CLIENTS: Final = 100_000
# The per-client table stays within this: MAX_TRACKED_CLIENTS clients with a few
# repositories each, fewer clients when each may have many (see Limiter).
TABLE_BUDGET: Final = 48 * 2**20
CLIENT_BYTES: Final = 400  # one client's entry, measured (tests/security/test_access.py)
REPOSITORY_BYTES: Final = 20  # each repository remembered for a client


class _Client:
    """What the limits remember of one client (slots: a table of 100,000 of them)."""

    __slots__ = ("downloads", "login_stamp", "login_tokens", "repositories", "stamp", "tokens")

    def __init__(self, tokens: float, stamp: float) -> None:
        self.tokens = tokens
        self.stamp = stamp
        self.downloads = 0
        # Pairs (hash of registry/repository, milliseconds when last asked), flat; at most
        # ``repositories`` pairs: 16 bytes each where a dict of strings took ~130.
        self.repositories: array[int] | None = None
        self.login_tokens: float | None = None
        self.login_stamp = 0.0


class Limiter:
    """Per-client token bucket, concurrent downloads, distinct repositories per window,
    and failed logins.

    Clients are keyed by address, IPv6 by its ``ipv6_prefix`` (one /64 is one client:
    a host picks addresses from its /64 at will). The table is bounded in memory: at most
    ``max_clients`` clients (least recently seen go first), by default as many as fit in
    ``TABLE_BUDGET`` with ``repositories`` repositories each (kept as hashes), and never
    more than ``MAX_TRACKED_CLIENTS``: 100,000 clients with five repositories each take
    about 45 MiB, measured in tests/security/test_access.py.
    """

    def __init__(
        self,
        rate: float,
        burst: int,
        downloads: int,
        repositories: int,
        window: float,
        *,
        ipv6_prefix: int = 64,
        failed_logins: int = 0,
        failed_logins_window: float = 60.0,
        max_clients: int | None = None,
    ) -> None:
        self.rate = rate
        self.burst = max(burst, 1)
        self.downloads = downloads
        self.repositories = repositories
        self.window = window
        self.ipv6_prefix = ipv6_prefix
        self.failed_logins = failed_logins
        self.login_rate = failed_logins / failed_logins_window if failed_logins_window else 0.0
        if max_clients is None:
            per_client = CLIENT_BYTES + REPOSITORY_BYTES * max(repositories, 0)
            max_clients = min(MAX_TRACKED_CLIENTS, TABLE_BUDGET // per_client)
        self.max_clients = max(max_clients, 1)
        self._clients: OrderedDict[int, _Client] = OrderedDict()

    def __len__(self) -> int:
        return len(self._clients)

    def key(self, client: str) -> int:
        """The table key: the IPv4 address as a number; for IPv6 its network of
        ``ipv6_prefix`` bits (above 2**128, apart from IPv4); -1 for no address."""
        address = parse_address(client)
        if address is None:
            return -1
        if isinstance(address, ipaddress.IPv4Address):
            return int(address)
        host_bits = 128 - self.ipv6_prefix
        return (1 << 128) | (int(address) >> host_bits << host_bits)

    def _bucket(self, client: str, now: float) -> _Client:
        key = self.key(client)
        bucket = self._clients.get(key)
        if bucket is None:
            bucket = _Client(float(self.burst), now)
            self._clients[key] = bucket
            while len(self._clients) > self.max_clients:
                self._clients.popitem(last=False)
        else:
            self._clients.move_to_end(key)
        return bucket

    def request(self, client: str) -> None:
        if self.rate <= 0:
            return
        now = time.monotonic()
        bucket = self._bucket(client, now)
        bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.stamp) * self.rate)
        bucket.stamp = now
        if bucket.tokens < 1:
            wait = math.ceil((1 - bucket.tokens) / self.rate)
            raise too_many(f"more than {self.rate:g} requests per second", wait)
        bucket.tokens -= 1

    def repository(self, client: str, key: str) -> None:
        if self.repositories <= 0:
            return
        now = time.monotonic()
        stamp = int(now * 1000)
        bucket = self._bucket(client, now)
        seen = bucket.repositories
        if seen is None:
            seen = bucket.repositories = array("q")
        name = hash(key)  # the per-process keyed string hash: collisions cannot be made
        names = seen[0::2]
        if name in names:
            seen[2 * names.index(name) + 1] = stamp
            return
        if len(names) >= self.repositories:  # full: forget what the window let go
            window = int(self.window * 1000)
            pairs = zip(names, seen[1::2], strict=True)
            kept = [(n, t) for n, t in pairs if stamp - t <= window]
            if len(kept) >= self.repositories:
                oldest = min(t for _, t in kept)
                raise too_many(
                    f"more than {self.repositories} repositories in {self.window:g}s",
                    max(1, math.ceil((window - (stamp - oldest)) / 1000)),
                )
            seen = bucket.repositories = array("q", [v for pair in kept for v in pair])
        seen.extend((name, stamp))

    @contextmanager
    def download(self, client: str) -> Iterator[None]:
        if self.downloads <= 0:
            yield
            return
        bucket = self._bucket(client, time.monotonic())
        if bucket.downloads >= self.downloads:
            raise too_many(f"more than {self.downloads} downloads at once", 1)
        bucket.downloads += 1
        try:
            yield
        finally:
            bucket.downloads -= 1

    def _login_tokens(self, bucket: _Client, now: float) -> float:
        tokens = bucket.login_tokens
        if tokens is None:
            return float(self.failed_logins)
        return min(float(self.failed_logins), tokens + (now - bucket.login_stamp) * self.login_rate)

    def login_attempt(self, client: str) -> None:
        """Before a password check: takes one of the client's failed logins (given back
        by :meth:`login_succeeded`), so that neither failures in a row nor checks at once
        exceed ``failed_logins``; 429 when none is left: no password check for it."""
        if self.failed_logins <= 0 or self.login_rate <= 0:
            return
        now = time.monotonic()
        bucket = self._bucket(client, now)
        tokens = self._login_tokens(bucket, now)
        if tokens < 1:
            wait = math.ceil((1 - tokens) / self.login_rate)
            raise too_many("too many failed logins", max(wait, 1))
        bucket.login_tokens = tokens - 1
        bucket.login_stamp = now

    def login_succeeded(self, client: str) -> None:
        if self.failed_logins <= 0 or self.login_rate <= 0:
            return
        now = time.monotonic()
        bucket = self._bucket(client, now)
        bucket.login_tokens = min(float(self.failed_logins), self._login_tokens(bucket, now) + 1)
        bucket.login_stamp = now


def too_many(what: str, retry_after: int) -> RegistryError:
    """A 429 for a limit exceeded, saying when to ask again."""
    return RegistryError(
        429,
        "TOOMANYREQUESTS",
        f"too many requests: {what}",
        headers={"Retry-After": str(retry_after)},
    )
