"""Who may ask what, and how much: network allow list, client authentication, the
anonymous read policy, and per-client limits, applied before anything else. Who the
client is comes from ``clients`` (trusted proxies), how much it may ask from ``limits``."""

from __future__ import annotations

import base64
import binascii
import fnmatch
from typing import Final

from aiohttp import web

from registry_mirror.api.clients import ClientAddresses, in_networks, networks
from registry_mirror.api.errors import RegistryError, error_response
from registry_mirror.api.limits import Limiter, too_many
from registry_mirror.auth import CheckBusy, Htpasswd
from registry_mirror.config import Settings

__all__ = [
    "ACCESS_KEY",
    "CLIENT",
    "USER",
    "AccessPolicy",
    "login_refusal",
    "refusal",
]

CLIENT: Final = web.RequestKey("client", str)  # the address the policy identified
USER: Final = web.RequestKey[str | None]("user")  # the authenticated user, None: anonymous


class AccessPolicy:
    """The access settings applied to requests: who the client is, whether its network may
    ask at all, who it is logged in as, what it may read, how much it may ask."""

    def __init__(self, settings: Settings) -> None:
        self.allow = networks(settings.access.allow)
        self.clients = ClientAddresses(settings.access.trusted_proxies)
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
        if self.htpasswd is None:
            return None
        header = request.headers.get("Authorization")
        if not header:
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
            raise too_many("too many password checks at once", 1) from None
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


def refusal(request: web.Request, *, counted: bool = True) -> web.Response | None:
    """Admission, for every request whatever its path: who the client is, whether its
    network may ask at all, and (when ``counted``: every request but the health probes)
    its request rate; the answer if it is refused."""
    policy = request.app[ACCESS_KEY]
    try:
        client = policy.clients.client(request)
        request[CLIENT] = client
        if policy.allow and not in_networks(client, policy.allow):
            raise RegistryError(403, "DENIED", "access from this address is not allowed")
        if counted:
            policy.limiter.request(client)
    except RegistryError as error:
        return error_response(error, request.method)
    return None


async def login_refusal(request: web.Request) -> web.Response | None:
    """On the registry API: who the client is logged in as (401 for wrong credentials;
    the ping asks anonymous clients to log in, see ``routes.base``); the answer if the
    credentials are refused."""
    policy = request.app[ACCESS_KEY]
    if policy.htpasswd is None:  # what user() answers then, without a coroutine
        request[USER] = None
        return None
    try:
        request[USER] = await policy.user(request)
    except RegistryError as error:
        return error_response(error, request.method)
    return None
