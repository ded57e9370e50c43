"""Who may ask what, and how much: network allow list, client authentication, the
anonymous read policy, and per-client limits. Applied before anything else."""

from __future__ import annotations

import base64
import binascii
import fnmatch
import ipaddress
import math
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Final

from aiohttp import web

from registry_mirror.api.errors import RegistryError, error_response
from registry_mirror.auth import Htpasswd
from registry_mirror.config import Settings

__all__ = ["ACCESS_KEY", "AccessPolicy", "Limiter", "access_middleware"]

CLIENT: Final = "registry_mirror.client"
USER: Final = "registry_mirror.user"
MAX_TRACKED_CLIENTS: Final = 100_000

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def _networks(specs: list[str]) -> list[Network]:
    return [ipaddress.ip_network(spec, strict=False) for spec in specs]


def _in(address: str, networks: list[Network]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in network for network in networks)


@dataclass
class _Bucket:
    tokens: float
    stamp: float
    downloads: int = 0
    repositories: dict[str, float] = field(default_factory=dict)


class Limiter:
    """Per-client token bucket, concurrent downloads and distinct repositories per window.

    Clients are keyed by address; the table is bounded (least recently seen go first).
    """

    def __init__(
        self, rate: float, burst: int, downloads: int, repositories: int, window: float
    ) -> None:
        self.rate = rate
        self.burst = max(burst, 1)
        self.downloads = downloads
        self.repositories = repositories
        self.window = window
        self._clients: OrderedDict[str, _Bucket] = OrderedDict()

    def _bucket(self, client: str, now: float) -> _Bucket:
        bucket = self._clients.get(client)
        if bucket is None:
            bucket = _Bucket(float(self.burst), now)
            self._clients[client] = bucket
            while len(self._clients) > MAX_TRACKED_CLIENTS:
                self._clients.popitem(last=False)
        else:
            self._clients.move_to_end(client)
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
        seen = self._bucket(client, now).repositories
        if key in seen:
            seen[key] = now
            return
        for old in [k for k, t in seen.items() if now - t > self.window]:
            del seen[old]
        if len(seen) >= self.repositories:
            oldest = min(seen.values())
            raise _too_many(
                f"more than {self.repositories} repositories in {self.window:g}s",
                max(1, math.ceil(self.window - (now - oldest))),
            )
        seen[key] = now

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
        )

    def client(self, request: web.Request) -> str:
        """The client's address; ``X-Forwarded-For`` is believed only from a trusted proxy
        (the rightmost address not itself a trusted proxy)."""
        peer = request.remote or ""
        if not self.trusted or not _in(peer, self.trusted):
            return peer
        forwarded = request.headers.get("X-Forwarded-For", "")
        for hop in reversed([h.strip() for h in forwarded.split(",")[:32] if h.strip()]):
            if not _in(hop, self.trusted):
                try:
                    return str(ipaddress.ip_address(hop))
                except ValueError:
                    return peer
        return peer

    def challenge(self, message: str = "authentication required") -> RegistryError:
        return RegistryError(
            401,
            "UNAUTHORIZED",
            message,
            headers={"WWW-Authenticate": f'Basic realm="{self.realm}"'},
        )

    async def user(self, request: web.Request) -> str | None:
        """The authenticated user, None if anonymous; 401 for wrong credentials."""
        header = request.headers.get("Authorization")
        if self.htpasswd is None or not header:
            return None
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "basic" or len(value) > 4096:
            raise self.challenge("unsupported credentials: use Basic authentication")
        try:
            user, sep, password = base64.b64decode(value, validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            raise self.challenge("malformed credentials") from None
        if sep and not user and not password:
            # containers/image (podman, skopeo) without a login answers the challenge with
            # an empty user and password: that is an anonymous client.
            return None
        if not sep or not await self.htpasswd.check(user, password):
            raise self.challenge("invalid username or password")
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


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
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
