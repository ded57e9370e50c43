"""Upstream authentication: ``WWW-Authenticate`` parsing, the token cache, and the
:class:`Authenticator` that answers a challenge (Basic, or a Bearer token from the realm)."""

from __future__ import annotations

import base64
import json
import math
import re
import time
from dataclasses import dataclass
from typing import Final

from yarl import URL

from registry_mirror.upstream.errors import UpstreamAuthFailed, UpstreamUnavailable
from registry_mirror.upstream.responses import read_decoded, status_error
from registry_mirror.upstream.sender import Sender
from registry_mirror.upstream.translate import translated

__all__ = ["Authenticator", "Challenge", "Token", "TokenCache", "parse_challenge"]

_PARAM_RE: Final = re.compile(r'\s*([A-Za-z0-9_-]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^,\s]*))\s*,?')
MAX_CHALLENGE_LENGTH: Final = 4096
MAX_TOKEN_RESPONSE: Final = 1024 * 1024
#: Content codings decoded on metadata answers (tokens, tag lists; manifests when a
#: proxy compresses them although identity was asked).
JSON_ENCODINGS: Final = "gzip, deflate"


@dataclass(frozen=True, slots=True)
class Challenge:
    scheme: str  # "bearer" or "basic", lower case
    params: dict[str, str]


def parse_challenge(header: str | None) -> Challenge | None:
    """Parse one ``WWW-Authenticate`` challenge; None if absent or unreadable."""
    if not header or len(header) > MAX_CHALLENGE_LENGTH:
        return None
    scheme, _, rest = header.strip().partition(" ")
    if not scheme.isalpha():
        return None
    params: dict[str, str] = {}
    pos = 0
    while pos < len(rest):
        match = _PARAM_RE.match(rest, pos)
        if match is None or match.end() == pos:
            break
        value = match.group(2) if match.group(2) is not None else match.group(3)
        params[match.group(1).lower()] = re.sub(r"\\(.)", r"\1", value)
        pos = match.end()
    return Challenge(scheme.lower(), params)


@dataclass(frozen=True, slots=True)
class Token:
    value: str
    expires_at: float  # monotonic

    def valid(self) -> bool:
        return time.monotonic() < self.expires_at


class TokenCache:
    """Bearer tokens per scope (``repository:library/alpine:pull``), until they expire.

    Tokens are renewed a little early (``margin`` seconds) so a request never
    leaves with a token about to expire on the way.
    """

    def __init__(self, margin: float = 10.0, max_entries: int = 10_000) -> None:
        self._tokens: dict[str, Token] = {}
        self._margin = margin
        self._max_entries = max_entries

    def get(self, scope: str) -> str | None:
        token = self._tokens.get(scope)
        if token is None:
            return None
        if not token.valid():
            del self._tokens[scope]
            return None
        return token.value

    def put(self, scope: str, value: str, expires_in: float) -> None:
        if len(self._tokens) >= self._max_entries:
            self._tokens = {k: t for k, t in self._tokens.items() if t.valid()}
            if len(self._tokens) >= self._max_entries:
                self._tokens.clear()
        lifetime = max(expires_in - self._margin, expires_in / 2)
        self._tokens[scope] = Token(value, time.monotonic() + lifetime)

    def drop(self, scope: str) -> None:
        self._tokens.pop(scope, None)


class Authenticator:
    """One upstream's credentials: the ``Authorization`` to send for a scope, and the
    answer to a challenge (Basic credentials, or a Bearer token fetched from the realm
    named, held to the policy of redirects)."""

    def __init__(self, sender: Sender, username: str | None, password: str | None) -> None:
        self._sender = sender
        self._name = sender.name
        self.basic = (
            "Basic " + base64.b64encode(f"{username}:{password or ''}".encode()).decode()
            if username is not None
            else None
        )
        self._tokens = TokenCache()
        self._uses_basic = False

    def header(self, scope: str) -> str | None:
        """What to send first: a cached token, Basic once the upstream asked for it, or
        nothing (the answer tells which)."""
        token = self._tokens.get(scope)
        if token is not None:
            return f"Bearer {token}"
        if self._uses_basic:
            return self.basic
        return None

    async def authenticate(self, challenge: Challenge | None, scope: str, repo: str) -> str:
        """Answer a challenge: the ``Authorization`` value to send next."""
        if challenge is None:
            raise UpstreamAuthFailed(f"{self._name} answered 401 without a usable challenge")
        if challenge.scheme == "basic":
            if self.basic is None:
                raise UpstreamAuthFailed(f"{self._name} requires credentials for {repo}")
            self._uses_basic = True
            return self.basic
        if challenge.scheme != "bearer" or not challenge.params.get("realm"):
            raise UpstreamAuthFailed(f"{self._name} asked for unsupported auth {challenge.scheme}")
        self._tokens.drop(scope)
        return f"Bearer {await self._fetch_token(challenge, scope)}"

    async def _fetch_token(self, challenge: Challenge, scope: str) -> str:
        name = self._name
        try:
            realm = URL(challenge.params["realm"])
        except ValueError:
            raise UpstreamAuthFailed(f"{name} named an unreadable token realm") from None
        if realm.scheme not in ("http", "https") or not realm.host:
            raise UpstreamAuthFailed(f"{name} named a token realm that is not HTTP(S)")
        # The realm gets the upstream's credentials (as registry:2 sends them to
        # auth.docker.io), so it is held to the policy of redirects: on a host other than
        # the upstream's own, no loopback/private/link-local address unless allowed, and
        # never plain HTTP when the upstream is HTTPS.
        origin = self._sender.origin
        own_host = (realm.host or "").lower() == (origin.host or "").lower()
        if self.basic and origin.scheme == "https" and realm.scheme != "https":
            raise UpstreamAuthFailed(
                f"{name} named a plain-HTTP token realm ({realm.host}); credentials"
                " are sent over HTTPS only"
            )
        guarded = not own_host and not self._sender.allow_private_redirects
        if guarded:
            await self._sender.refuse_private(realm, "token realm")
        query: dict[str, str] = {"scope": scope}
        if "service" in challenge.params:
            query["service"] = challenge.params["service"]
        headers = {"Accept-Encoding": JSON_ENCODINGS}
        if self.basic:
            headers["Authorization"] = self.basic
        token_url = realm.update_query(query)
        session = self._sender.pool(blob=False, guarded=guarded)
        with translated(f"{name}'s token service unreachable", refused="token realm at"):
            async with self._sender.open(session, "GET", token_url, headers) as response:
                if response.status in (401, 403):
                    raise UpstreamAuthFailed(
                        f"{name}'s token service refused the credentials"
                        if self.basic
                        else f"{name}'s token service refused anonymous access"
                    )
                if response.status == 429:
                    if self._sender.metrics is not None:
                        self._sender.metrics.rate_limited.inc()
                    raise status_error(response, "token request")
                if response.status != 200:
                    raise UpstreamUnavailable(f"{name}'s token service answered {response.status}")
                raw = await read_decoded(response, MAX_TOKEN_RESPONSE)
        try:
            body = json.loads(raw.decode())
            token = body.get("token") or body.get("access_token")
            expires_in = float(body.get("expires_in") or 60)
        except (ValueError, AttributeError, TypeError, UnicodeDecodeError, RecursionError) as exc:
            raise UpstreamAuthFailed(f"{name}'s token service sent an unreadable token") from exc
        if not isinstance(token, str) or not token or len(token) > 64 * 1024:
            raise UpstreamAuthFailed(f"{name}'s token service sent no token")
        if not all(33 <= ord(c) < 127 for c in token):
            raise UpstreamAuthFailed(f"{name}'s token service sent a malformed token")
        if not math.isfinite(expires_in) or expires_in <= 0:
            expires_in = 60.0  # the distribution spec's default
        self._tokens.put(scope, token, min(expires_in, 86400.0))
        return token
