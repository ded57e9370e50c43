"""The BlobStore seam: bytes by digest, written through a staged, verified commit."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from registry_mirror.reference import Digest

__all__ = [
    "BlobInfo",
    "BlobStore",
    "DigestMismatch",
    "StagedBlob",
    "StagedReader",
    "StorageError",
]


@dataclass(frozen=True, slots=True)
class BlobInfo:
    digest: Digest
    size: int
    disk: int = 0  # bytes allocated on disk, when the store knows


class StorageError(Exception):
    """The store could not read or write (disk full, I/O error, permissions)."""


class DigestMismatch(StorageError):
    """Staged content did not hash to the expected digest or length: nothing was committed."""

    def __init__(self, expected: Digest, actual: Digest, size: int, expected_size: int | None):
        super().__init__(
            f"content of {expected} hashed to {actual} ({size} bytes"
            + (f", expected {expected_size})" if expected_size is not None else ")")
        )
        self.expected = expected
        self.actual = actual


class StagedReader(Protocol):
    async def read(self, offset: int, size: int) -> bytes: ...

    def close(self) -> None: ...


class StagedBlob(Protocol):
    """A blob being written. Hashes as it goes; becomes visible only on ``commit``."""

    @property
    def written(self) -> int:
        """Bytes written so far (readable through ``read``)."""
        ...

    async def write(self, data: bytes) -> None: ...

    def reader(self) -> StagedReader:
        """A reader of the bytes written so far, for clients that follow a fill in
        progress; it stays valid after commit or abort until closed."""
        ...

    async def commit(self, expected: Digest, size: int | None = None) -> BlobInfo:
        """Verify digest (and size when given) and publish atomically, or raise
        :class:`DigestMismatch` and discard everything."""
        ...

    async def abort(self) -> None:
        """Discard the staged content. Safe to call twice or after commit."""
        ...


class BlobStore(Protocol):
    """Content-addressed blob storage (layers, configs and manifests alike)."""

    async def stat(self, digest: Digest) -> BlobInfo | None: ...

    def open(self, digest: Digest, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
        """Stream bytes ``[start, end)`` of a committed blob."""
        ...

    async def read_all(self, digest: Digest, limit: int) -> bytes | None:
        """A small blob (a manifest) whole, or None if absent; StorageError above ``limit``."""
        ...

    async def begin_write(self) -> StagedBlob: ...

    async def verify(
        self, digest: Digest, progress: Callable[[int], None] | None = None
    ) -> tuple[bool, int]:
        """Re-hash a committed blob: (content matches its digest, length read)."""
        ...

    async def delete(self, digest: Digest) -> bool: ...

    def iter_digests(self) -> AsyncIterator[Digest]: ...

    async def disk_usage(self) -> int:
        """Bytes on disk of every committed blob (measured, not summed from the index)."""
        ...

    async def disk_sizes(self, digests: list[Digest]) -> dict[str, int]:
        """Bytes on disk of these blobs (absent ones are left out)."""
        ...

    async def free_space(self) -> int | None:
        """Bytes free for the store on its filesystem, if that means anything."""
        ...

    async def clean_staging(self) -> int:
        """Remove leftovers of writes interrupted by a crash; returns how many."""
        ...

    def local_path(self, digest: Digest) -> Path | None:
        """A local file for zero-copy serving (sendfile), if this store has one."""
        ...

    async def open_local(self, digest: Digest) -> int:
        """A read descriptor of that local file (the caller closes it), opened on the
        store's own threads; FileNotFoundError if it is gone."""
        ...

    async def close(self) -> None:
        """Release what the store holds (its I/O threads); nothing works after."""
        ...
