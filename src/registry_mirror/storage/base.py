"""The BlobStore seam: bytes by digest, written through a staged, verified commit.

The core (:class:`BlobStore`) is what every store does. What only some stores can do is
an optional capability, a protocol of its own that callers test for with ``isinstance``:
:class:`LocalFiles` (a descriptor for zero-copy serving), :class:`Capacity` (bytes used
and free on a disk of its own), :class:`Census` (the blobs and their bytes in one walk),
:class:`Staging` (leftovers of interrupted writes).
How a committed blob leaves the server is the store's to say (:meth:`BlobStore.delivery`):
from a local file, as a stream, or by redirecting the client.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from registry_mirror.reference import Digest

__all__ = [
    "BlobInfo",
    "BlobStore",
    "Capacity",
    "Census",
    "Delivery",
    "DigestMismatch",
    "LocalFile",
    "LocalFiles",
    "LocalStagedReader",
    "Redirect",
    "StagedBlob",
    "StagedReader",
    "Staging",
    "StorageError",
    "Stream",
    "sizes_on_disk",
    "stored_bytes",
]


@dataclass(frozen=True, slots=True)
class BlobInfo:
    digest: Digest
    size: int
    modified: float | None = None  # when it was committed (seconds since the epoch), if known


@dataclass(frozen=True, slots=True)
class LocalFile:
    """The blob is a file on this machine: sent zero-copy (sendfile) where the transport
    allows, else streamed with :meth:`BlobStore.open`."""

    open: Callable[[], Awaitable[int]]  # a read descriptor, the caller's to close;
    # FileNotFoundError when the file went away since (evicted)


@dataclass(frozen=True, slots=True)
class Stream:
    """The server streams the blob from :meth:`BlobStore.open`."""


@dataclass(frozen=True, slots=True)
class Redirect:
    """The client fetches the blob from ``url`` itself (object storage)."""

    url: str


Delivery = LocalFile | Stream | Redirect


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

    async def write(self, *pieces: bytes) -> None:
        """Append ``pieces`` in order (one write of them all, where the store can)."""
        ...

    def reader(self) -> StagedReader:
        """A reader of the bytes written so far, for clients that follow a fill in
        progress; it stays valid after commit or abort until closed."""
        ...

    async def commit(
        self,
        expected: Digest,
        size: int | None = None,
        verified: Callable[[], None] | None = None,
    ) -> BlobInfo:
        """Verify digest (and size when given) and publish atomically, or raise
        :class:`DigestMismatch` and discard everything. ``verified`` is called once the
        content is known to match, before it is made durable and published (a client
        may be answered then: a crash in between loses a cache entry, never correctness)."""
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

    async def delivery(self, digest: Digest) -> Delivery:
        """How a committed blob leaves the server."""
        ...

    async def close(self) -> None:
        """Release what the store holds (its I/O threads); nothing works after."""
        ...


@runtime_checkable
class LocalFiles(Protocol):
    """A store whose blobs are local files."""

    async def open_local(self, digest: Digest) -> int:
        """A read descriptor of the blob's file (the caller closes it), opened on the
        store's own threads; FileNotFoundError if it is gone."""
        ...


@runtime_checkable
class LocalStagedReader(Protocol):
    """A reader of a staged blob that is a local file: the written bytes can leave by
    ``sendfile`` from its descriptor (valid until the reader is closed)."""

    def fileno(self) -> int: ...


@runtime_checkable
class Capacity(Protocol):
    """A store on a disk of its own: what the cache takes and what is left."""

    async def disk_usage(self) -> int:
        """Bytes on disk of every committed blob (measured, not summed from the index)."""
        ...

    async def disk_sizes(self, digests: list[Digest]) -> dict[Digest, int]:
        """Bytes on disk of these blobs (absent ones are left out)."""
        ...

    async def free_space(self) -> int | None:
        """Bytes free for the store on its filesystem, if that means anything."""
        ...

    def allocated(self, size: int) -> int:
        """Bytes on disk a blob of ``size`` bytes takes (whole blocks)."""
        ...


@runtime_checkable
class Census(Protocol):
    """A store that counts its committed blobs as it measures them."""

    async def census(self) -> tuple[int, int]:
        """(blobs, bytes on disk) of every committed blob, measured in one walk."""
        ...


@runtime_checkable
class Staging(Protocol):
    """A store whose interrupted writes leave something behind."""

    async def staging_leftovers(self, older_than: float) -> list[str]:
        """Leftovers last written more than ``older_than`` seconds ago, by name."""
        ...

    async def clean_staging(self, older_than: float = 0.0) -> int:
        """Remove the leftovers last written more than ``older_than`` seconds ago (all of
        them by default, at start); returns how many."""
        ...


async def sizes_on_disk(store: BlobStore, digests: list[Digest]) -> dict[Digest, int]:
    """Bytes these blobs take (absent ones left out): measured on a disk of the store's
    own, else their lengths."""
    if isinstance(store, Capacity):
        return await store.disk_sizes(digests)
    sizes: dict[Digest, int] = {}
    for digest in digests:
        info = await store.stat(digest)
        if info is not None:
            sizes[digest] = info.size
    return sizes


def stored_bytes(store: BlobStore, size: int) -> int:
    """What a blob of ``size`` bytes costs the store: whole blocks on a disk of its own."""
    return store.allocated(size) if isinstance(store, Capacity) else size
