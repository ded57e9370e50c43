"""Who may ask what, and how much: network allow list, client authentication, the
anonymous read policy, and per-client limits. Applied before anything else."""

from __future__ import annotations

import base64
import binascii
import fnmatch
import functools
import ipaddress
import math
import time
from array import array
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Final

from aiohttp import web

from registry_mirror.api.errors import Handler, RegistryError, error_response
from registry_mirror.auth import CheckBusy, Htpasswd
from registry_mirror.config import Settings

__all__ = [
    "ACCESS_KEY",
    "CLIENT",
    "MAX_FORWARDED_HOPS",
    "MAX_TRACKED_CLIENTS",
    "UNKNOWN_CLIENT",
    "USER",
    "AccessPolicy",
    "Limiter",
    "access_middleware",
    "parse_address",
]

CLIENT: Final = web.RequestKey("client", str)  # the address the policy identified
USER: Final = web.RequestKey[str | None]("user")  # the authenticated user, None: anonymous
MAX_TRACKED_CLIENTS: Final = 100_000
# The per-client table stays within this: MAX_TRACKED_CLIENTS clients with a few
# repositories each, fewer clients when each may have many (see Limiter).
TABLE_BUDGET: Final = 48 * 2**20
CLIENT_BYTES: Final = 400  # one client's entry, measured (tests/security/test_access.py)
REPOSITORY_BYTES: Final = 20  # each repository remembered for a client
# Trusted proxies walked from the right of X-Forwarded-For; a longer trusted chain is
# not believed (the client is then UNKNOWN_CLIENT).
MAX_FORWARDED_HOPS: Final = 16
# The client of a request whose forwarded chain cannot be believed (an unparsable hop,
# too many hops): in no network, so an allow list refuses it; one bucket for all of them.
UNKNOWN_CLIENT: Final = "unknown"
_MAX_HOP_LENGTH: Final = 64

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def _networks(specs: list[str]) -> list[Network]:
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


def _in(address: str, networks: list[Network]) -> bool:
    ip = parse_address(address)
    return ip is not None and any(ip in network for network in networks)


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
            raise _too_many(f"more than {self.rate:g} requests per second", wait)
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
                raise _too_many(
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
            raise _too_many(f"more than {self.downloads} downloads at once", 1)
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
            raise _too_many("too many failed logins", max(wait, 1))
        bucket.login_tokens = tokens - 1
        bucket.login_stamp = now

    def login_succeeded(self, client: str) -> None:
        if self.failed_logins <= 0 or self.login_rate <= 0:
            return
        now = time.monotonic()
        bucket = self._bucket(client, now)
        bucket.login_tokens = min(float(self.failed_logins), self._login_tokens(bucket, now) + 1)
        bucket.login_stamp = now


def _too_many(what: str, retry_after: int) -> RegistryError:
    return RegistryError(
        429,
        "TOOMANYREQUESTS",
        f"too many requests: {what}",
        headers={"Retry-After": str(retry_after)},
    )


class AccessPolicy:
    def __init__(self, settings: Settings) -> None:
        self.allow = _networks(settings.access.allow)
        self.trusted = _networks(settings.access.trusted_proxies)
        path = settings.auth.htpasswd.path
        self.htpasswd = Htpasswd(path) if path is not None else None
        self.realm = settings.auth.htpasswd.realm.replace('"', "")
        self.anonymous = list(settings.auth.anonymous)
        limits = settings.limits
        self.limiter = Limiter(
            limits.requests_per_second,
            limits.burst,
            limits.downloads_per_client,
            limits.repositories_per_client,
            limits.window,
            ipv6_prefix=limits.ipv6_prefix,
            failed_logins=limits.failed_logins,
            failed_logins_window=limits.failed_logins_window,
        )

    async def close(self, _: web.Application | None = None) -> None:
        if self.htpasswd is not None:
            self.htpasswd.close()

    def _trusted(self, address: Address) -> bool:
        return any(address in network for network in self.trusted)

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

    def challenge(self, message: str = "authentication required") -> RegistryError:
        return RegistryError(
            401,
            "UNAUTHORIZED",
            message,
            headers={"WWW-Authenticate": f'Basic realm="{self.realm}"'},
        )

    async def user(self, request: web.Request) -> str | None:
        """The authenticated user, None if anonymous; 401 for wrong credentials, 429
        once the client has failed too many logins (no check is made then) or when the
        password checks are all busy. No credential, however odd, is a server error."""
        header = request.headers.get("Authorization")
        if self.htpasswd is None or not header:
            return None
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "basic" or len(value) > 4096:
            raise self.challenge("unsupported credentials: use Basic authentication")
        try:
            raw = base64.b64decode(value.strip(), validate=True)
        except binascii.Error:
            raise self.challenge("malformed credentials") from None
        name, sep, password = raw.partition(b":")
        if not sep:
            raise self.challenge("malformed credentials")
        if not name and not password:
            # containers/image (podman, skopeo) without a login answers the challenge with
            # an empty user and password: that is an anonymous client.
            return None
        try:
            user = name.decode()
        except UnicodeDecodeError:
            raise self.challenge("malformed credentials") from None
        if not user.isprintable():
            raise self.challenge("malformed credentials")
        if await self.htpasswd.remembered(user, password):
            return user
        client = request[CLIENT]
        self.limiter.login_attempt(client)
        try:
            ok = await self.htpasswd.check(user, password)
        except CheckBusy:
            self.limiter.login_succeeded(client)  # not checked: not a failure
            raise _too_many("too many password checks at once", 1) from None
        if not ok:
            raise self.challenge("invalid username or password")
        self.limiter.login_succeeded(client)
        return user

    def authorize(self, request: web.Request, key: str) -> None:
        """A repository read: logged-in users read everything; anonymous clients what
        the anonymous policy allows. Also counts the repository for the client's limit."""
        if not self.may_read(request, key):
            raise self.challenge()
        self.limiter.repository(request[CLIENT], key)

    def may_read(self, request: web.Request, key: str) -> bool:
        """Without htpasswd everyone reads everything; with it, logged-in users do, and
        anonymous clients what the anonymous policy names."""
        if self.htpasswd is None or request.get(USER) is not None:
            return True
        return any(fnmatch.fnmatchcase(key, pattern) for pattern in self.anonymous)


ACCESS_KEY: Final = web.AppKey("access", AccessPolicy)


@web.middleware
async def access_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    policy: AccessPolicy = request.app[ACCESS_KEY]
    try:
        client = policy.client(request)
        request[CLIENT] = client
        if policy.allow and not _in(client, policy.allow):
            raise RegistryError(403, "DENIED", "access from this address is not allowed")
        policy.limiter.request(client)
        request[USER] = await policy.user(request)
        if (
            policy.htpasswd is not None
            and request[USER] is None
            and request.path in ("/v2", "/v2/")
        ):
            # The ping tells clients to log in (they send credentials from then on);
            # clients without credentials go on anonymously.
            raise policy.challenge()
    except RegistryError as error:
        return error_response(error, request.method)
    return await handler(request)
