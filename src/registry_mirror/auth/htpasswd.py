"""An htpasswd file of bcrypt entries (``htpasswd -B``, what registry:2 reads).

Checking a bcrypt hash costs tens of milliseconds by design, and clients send Basic
credentials on every request: a successful check is remembered for a few minutes (by a
keyed digest of the credentials, never the password itself), and checks run in a worker
thread. The file is read again when it changes.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import os
import secrets
import time
from pathlib import Path
from typing import Final

import bcrypt

__all__ = ["Htpasswd", "HtpasswdError"]

REMEMBER: Final = 300.0
RECHECK_FILE: Final = 5.0
MAX_REMEMBERED: Final = 10_000


class HtpasswdError(Exception):
    """The file cannot be used: missing, unreadable or with non-bcrypt entries."""


class Htpasswd:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._users: dict[str, bytes] = {}
        self._mtime: float | None = None
        self._checked_file = 0.0
        self._key = secrets.token_bytes(32)
        self._remembered: dict[bytes, float] = {}
        self._dummy = bcrypt.hashpw(b"not a password", bcrypt.gensalt(rounds=10))
        self._load()

    def __repr__(self) -> str:
        return f"<Htpasswd {self.path}: {len(self._users)} users>"

    def _load(self) -> None:
        try:
            stat = os.stat(self.path)
            text = self.path.read_text()
        except OSError as exc:
            raise HtpasswdError(f"cannot read htpasswd file {self.path}: {exc.strerror}") from None
        users: dict[str, bytes] = {}
        for number, raw in enumerate(text.splitlines(), 1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            user, sep, hashed = line.partition(":")
            if not sep or not user:
                raise HtpasswdError(f"{self.path}:{number}: expected user:hash")
            if not hashed.startswith(("$2y$", "$2a$", "$2b$")):
                raise HtpasswdError(
                    f"{self.path}:{number}: only bcrypt entries are supported (htpasswd -B)"
                )
            users[user] = hashed.encode()
        self._users = users
        self._mtime = stat.st_mtime
        self._remembered.clear()

    def _refresh(self) -> None:
        now = time.monotonic()
        if now - self._checked_file < RECHECK_FILE:
            return
        self._checked_file = now
        try:
            mtime = os.stat(self.path).st_mtime
        except OSError:
            return  # keep the users we have; the file may be being replaced
        if mtime != self._mtime:
            # A half-written file: keep the previous users until it is whole.
            with contextlib.suppress(HtpasswdError):
                self._load()

    async def check(self, user: str, password: str) -> bool:
        await asyncio.to_thread(self._refresh)
        hashed = self._users.get(user)
        token = hmac.new(self._key, f"{user}\0{password}".encode(), hashlib.sha256).digest()
        now = time.monotonic()
        remembered = self._remembered.get(token)
        if remembered is not None and remembered > now and hashed is not None:
            return True
        if hashed is None:
            # Spend the same time as a real check: no user enumeration by timing.
            await asyncio.to_thread(bcrypt.checkpw, password.encode(), self._dummy)
            return False
        ok = await asyncio.to_thread(bcrypt.checkpw, password.encode(), hashed)
        if ok:
            if len(self._remembered) >= MAX_REMEMBERED:
                self._remembered.clear()
            self._remembered[token] = now + REMEMBER
        return ok
