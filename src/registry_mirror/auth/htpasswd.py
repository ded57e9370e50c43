"""An htpasswd file of bcrypt entries (``htpasswd -B``, what registry:2 reads).

Checking a bcrypt hash costs milliseconds to tens of milliseconds by design, and clients
send Basic credentials on every request:

- a successful check is remembered for a few minutes (by a keyed digest of the
  credentials, never the password itself), so a logged-in client costs no bcrypt;
- checks run on a small pool of their own (``CHECK_THREADS`` threads, at most
  ``CHECK_QUEUE`` waiting): a flood of bad credentials can neither take the threads the
  server needs for files nor queue without bound; beyond the queue :class:`CheckBusy`;
- an unknown user costs one bcrypt at the cost most entries of the file use, so response
  times do not tell which users exist.

The file is read again when it changes (looked at every ``RECHECK_FILE`` seconds, and at
once by :meth:`Htpasswd.reload`, on ``SIGHUP``). The entries that parse apply at once
(a user removed from the file loses access at the next look); a line that does not parse
(an MD5 ``$apr1$`` or SHA entry, a damaged line) is refused with one ERROR line naming
the file and line number, and that user cannot log in. A file that cannot be read at
start is fatal; one that becomes unreadable later leaves no user able to log in (logged),
never the previous users.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import hmac
import logging
import os
import re
import secrets
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import bcrypt

__all__ = ["CheckBusy", "Htpasswd", "HtpasswdError"]

log = logging.getLogger(__name__)

REMEMBER: Final = 300.0
RECHECK_FILE: Final = 5.0
MAX_REMEMBERED: Final = 10_000
CHECK_THREADS: Final = 2
CHECK_QUEUE: Final = 16  # checks waiting for a thread, beyond those running
BCRYPT_MAX_PASSWORD: Final = 72  # bcrypt reads this many bytes; the rest never counted
DEFAULT_COST: Final = 5  # htpasswd -B's default, for a file with no entries

_BCRYPT = re.compile(r"\$2[aby]\$(\d\d)\$[./A-Za-z0-9]{53}")


class HtpasswdError(Exception):
    """The file cannot be used at all: missing or unreadable at start."""


class CheckBusy(Exception):
    """Too many password checks are running or waiting; try again shortly."""


@dataclass(frozen=True, slots=True)
class _Parsed:
    users: dict[str, bytes]
    problems: list[str]
    cost: int


@dataclass(frozen=True, slots=True)
class _Read:
    signature: tuple[int, int, int]
    parsed: _Parsed
    dummy: bytes


def _signature(stat: os.stat_result) -> tuple[int, int, int]:
    return (stat.st_mtime_ns, stat.st_size, stat.st_ino)


def _parse(path: Path, data: bytes) -> _Parsed:
    users: dict[str, bytes] = {}
    problems: list[str] = []
    for number, raw in enumerate(data.splitlines(), 1):
        try:
            line = raw.decode().strip()
        except UnicodeDecodeError:
            problems.append(f"{path}:{number}: not UTF-8 text; line ignored")
            continue
        if not line or line.startswith("#"):
            continue
        user, sep, hashed = line.partition(":")
        if not sep or not user:
            problems.append(f"{path}:{number}: expected user:hash; line ignored")
            continue
        if _BCRYPT.fullmatch(hashed) is None or not 4 <= int(hashed[4:6]) <= 31:
            problems.append(
                f"{path}:{number}: user {user!r} has no bcrypt entry (only htpasswd -B"
                " entries are supported); this user cannot log in"
            )
            users.pop(user, None)  # an earlier line for the same user no longer holds
            continue
        users[user] = hashed.encode()
    costs = collections.Counter(int(hashed[4:6]) for hashed in users.values())
    # The most common cost (the highest of equals): an unknown user takes as long.
    cost = max(costs, key=lambda c: (costs[c], c)) if costs else DEFAULT_COST
    return _Parsed(users, problems, cost)


def _read(path: Path) -> tuple[tuple[int, int, int], bytes]:
    with open(path, "rb") as file:
        stat = os.fstat(file.fileno())
        return _signature(stat), file.read()


class Htpasswd:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._users: dict[str, bytes] = {}
        self._signature: tuple[int, int, int] | None = None
        self._checked_file = time.monotonic()
        self._key = secrets.token_bytes(32)
        self._remembered: dict[bytes, float] = {}
        self._dummy = b""  # what an unknown user is checked against
        self._dummy_cost = 0
        self._pool = ThreadPoolExecutor(CHECK_THREADS, thread_name_prefix="bcrypt")
        self._pending = 0
        self._reported: object = None  # the last state logged, to log once per change
        #: What is wrong with the file now, one line each (empty when it is sound).
        self.problems: list[str] = []
        try:
            signature, data = _read(path)
        except OSError as exc:
            raise HtpasswdError(f"cannot read htpasswd file {path}: {exc.strerror}") from None
        parsed = _parse(path, data)
        self._install(signature, parsed, _dummy_hash(parsed.cost))

    def __repr__(self) -> str:
        return f"<Htpasswd {self.path}: {len(self._users)} users>"

    @property
    def users(self) -> int:
        return len(self._users)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    # -- the file --------------------------------------------------------------------

    def _install(
        self, signature: tuple[int, int, int] | None, parsed: _Parsed, dummy: bytes
    ) -> None:
        self._users = parsed.users
        self._dummy = dummy
        self._dummy_cost = parsed.cost
        self._signature = signature
        self._remembered = {}
        self.problems = parsed.problems
        state = (signature, tuple(parsed.problems))
        if parsed.problems and state != self._reported:
            for problem in parsed.problems:
                log.error("htpasswd: %s", problem)
        self._reported = state

    def _read_changed(self, force: bool) -> _Read | OSError | None:
        """In a worker thread: the file parsed (with a dummy hash of its cost) if it
        changed or ``force``; the error if it cannot be read; None if unchanged."""
        try:
            signature, data = _read(self.path)
        except OSError as exc:
            return exc
        if signature == self._signature and not force:
            return None
        parsed = _parse(self.path, data)
        dummy = self._dummy if parsed.cost == self._dummy_cost else _dummy_hash(parsed.cost)
        return _Read(signature, parsed, dummy)

    async def reload(self, force: bool = True) -> None:
        """Read the file again now (``SIGHUP``; or if it changed); logs what it found."""
        self._checked_file = time.monotonic()
        outcome = await asyncio.to_thread(self._read_changed, force)
        if outcome is None:
            return
        if isinstance(outcome, OSError):
            if self._signature is not None or self._reported != outcome.errno:
                log.error(
                    "cannot read htpasswd file %s (%s): no user can log in until it is"
                    " readable again",
                    self.path,
                    outcome.strerror,
                )
            self._users, self._remembered, self._signature = {}, {}, None
            self._reported = outcome.errno
            self.problems = [f"cannot read htpasswd file {self.path}: {outcome.strerror}"]
            return
        self._install(outcome.signature, outcome.parsed, outcome.dummy)
        log.info(
            "htpasswd file %s read: %d users%s",
            self.path,
            len(self._users),
            f", {len(self.problems)} lines refused" if self.problems else "",
        )

    async def _refresh(self) -> None:
        if time.monotonic() - self._checked_file < RECHECK_FILE:
            return
        await self.reload(force=False)  # one look per interval: the stamp is set first

    # -- checks ----------------------------------------------------------------------

    def _token(self, user: str, password: bytes, hashed: bytes) -> bytes:
        """A keyed digest of the credentials and the entry they were checked against:
        a changed entry (new password) never matches what was remembered for the old."""
        encoded = user.encode()
        message = b"%d:%s%d:%s%s" % (len(encoded), encoded, len(hashed), hashed, password)
        return hmac.new(self._key, message, hashlib.sha256).digest()

    async def remembered(self, user: str, password: bytes) -> bool:
        """True if these credentials were checked good a short while ago (no bcrypt)."""
        await self._refresh()
        hashed = self._users.get(user)
        if hashed is None:
            return False
        expires = self._remembered.get(self._token(user, password, hashed))
        return expires is not None and expires > time.monotonic()

    async def check(self, user: str, password: bytes) -> bool:
        """A full bcrypt check on the pool. Raises :class:`CheckBusy` when the pool and
        its queue are full. A password longer than bcrypt reads is checked on the bytes
        bcrypt reads, as ``htpasswd`` and registry:2 do."""
        await self._refresh()
        if self._pending >= CHECK_THREADS + CHECK_QUEUE:
            raise CheckBusy
        hashed = self._users.get(user)
        # An unknown user spends the same time as a known one: no enumeration by timing.
        against = hashed if hashed is not None else self._dummy
        self._pending += 1
        try:
            loop = asyncio.get_running_loop()
            ok = await loop.run_in_executor(
                self._pool, _checkpw, password[:BCRYPT_MAX_PASSWORD], against
            )
        finally:
            self._pending -= 1
        if not ok or hashed is None:
            return False
        if len(self._remembered) >= MAX_REMEMBERED:
            self._remembered.clear()
        self._remembered[self._token(user, password, hashed)] = time.monotonic() + REMEMBER
        return True


def _dummy_hash(cost: int) -> bytes:
    return bcrypt.hashpw(secrets.token_bytes(16), bcrypt.gensalt(rounds=cost))


def _checkpw(password: bytes, hashed: bytes) -> bool:
    try:
        return bcrypt.checkpw(password, hashed)
    except ValueError as exc:  # entries are validated when read: not expected
        log.error("htpasswd: bcrypt refused a check: %s", exc)
        return False
