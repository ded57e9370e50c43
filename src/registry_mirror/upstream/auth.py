"""Upstream authentication: ``WWW-Authenticate`` parsing and the token cache."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Final

__all__ = ["Challenge", "Token", "TokenCache", "parse_challenge"]

_PARAM_RE: Final = re.compile(r'\s*([A-Za-z0-9_-]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^,\s]*))\s*,?')
MAX_CHALLENGE_LENGTH: Final = 4096


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
