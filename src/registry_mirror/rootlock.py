"""``ROOT/lock``: one server per cache root, and the cache's generation.

The server holds an exclusive ``flock`` on ``ROOT/lock`` for its whole life, taken
before it touches the cache (the staging clean-up at start would otherwise delete a
running server's downloads): a second server on the same root refuses to start.
Operator commands never take that lock; they run beside the server.

The server remembers things about the index (tag → digest, manifest bodies) to keep
hot requests off the disk. An operator command that removes content (``prune``,
``verify --repair``) makes those memories wrong, so it writes a new *generation* (the
file's first 8 bytes, a random value) after each of its index transactions. The server
keeps the file mapped and reads the generation (a memory read, no system call) before it
trusts any memory; when it changed, everything remembered is forgotten.

Operator commands that remove content also exclude each other, with a POSIX record lock
on one byte of the same file (independent of the server's ``flock``).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import mmap
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Final

from registry_mirror.storage import StorageError

__all__ = ["RootLock", "RootLocked", "bump_generation", "operator_lock"]

LOCK_NAME: Final = "lock"
GENERATION_SIZE: Final = 8
OPERATOR_BYTE: Final = 64  # the byte operator commands lock among themselves


class RootLocked(StorageError):
    """Another process holds the cache root."""


def _open(root: Path) -> int:
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StorageError(f"cannot create storage under {root}: {exc.strerror}") from exc
    try:
        return os.open(root / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        raise StorageError(f"cannot open {root / LOCK_NAME}: {exc.strerror}") from exc


class RootLock:
    """The server's hold on a cache root (blocking calls: run it in a thread)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._fd = _open(root)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = self._holder()
            os.close(self._fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise RootLocked(
                    f"cache {root} is in use by another registry-mirror server"
                    f"{f' (pid {holder})' if holder else ''}: one server per cache root"
                ) from None
            raise StorageError(f"cannot lock {root / LOCK_NAME}: {exc.strerror}") from exc
        try:
            if os.fstat(self._fd).st_size < GENERATION_SIZE:
                os.pwrite(self._fd, os.urandom(GENERATION_SIZE), 0)
            os.ftruncate(self._fd, GENERATION_SIZE)
            os.pwrite(self._fd, f"{os.getpid()}\n".encode(), GENERATION_SIZE)
            self._map = mmap.mmap(self._fd, GENERATION_SIZE, mmap.MAP_SHARED, mmap.PROT_READ)
        except OSError as exc:
            os.close(self._fd)
            raise StorageError(f"cannot use {root / LOCK_NAME}: {exc.strerror}") from exc

    def _holder(self) -> str:
        with contextlib.suppress(OSError, ValueError):
            return os.pread(self._fd, 32, GENERATION_SIZE).decode().strip()
        return ""

    def generation(self) -> bytes:
        """The current generation: changes whenever an operator command removed content."""
        return self._map[:GENERATION_SIZE]

    def close(self) -> None:
        if self._fd < 0:
            return
        self._map.close()
        with contextlib.suppress(OSError):
            os.ftruncate(self._fd, GENERATION_SIZE)  # no pid: nobody holds it now
        os.close(self._fd)  # releases the flock
        self._fd = -1


def bump_generation(root: Path) -> None:
    """Tell a server on ``root`` (if any) to forget what it remembers of the index."""
    fd = _open(root)
    try:
        os.pwrite(fd, os.urandom(GENERATION_SIZE), 0)
    except OSError as exc:
        raise StorageError(f"cannot write {root / LOCK_NAME}: {exc.strerror}") from exc
    finally:
        os.close(fd)


@contextlib.contextmanager
def operator_lock(root: Path) -> Iterator[None]:
    """Held by an operator command while it removes content: one at a time."""
    fd = _open(root)
    try:
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, OPERATOR_BYTE)
        except OSError as exc:
            if exc.errno in (errno.EACCES, errno.EAGAIN):
                raise RootLocked(f"another prune or verify --repair is running on {root}") from None
            raise StorageError(f"cannot lock {root / LOCK_NAME}: {exc.strerror}") from exc
        yield
    finally:
        os.close(fd)
