"""BlobStore core in memory: committed blobs in a dict, writes staged in a buffer."""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import AsyncIterator, Callable
from typing import Final

from registry_mirror.reference import Digest
from registry_mirror.storage import BlobInfo, Delivery, DigestMismatch, StorageError, Stream

__all__ = ["MemoryBlobStore", "MemoryStagedBlob", "MemoryStagedReader"]

CHUNK: Final = 64 * 1024


class MemoryBlobStore:
    """Committed blobs in :attr:`blobs` (digest → content; tests may look or damage);
    :attr:`readers`: every reader of a write in progress opened (a client following it)."""

    def __init__(self, *, chunk_size: int = CHUNK) -> None:
        self.blobs: dict[Digest, bytes] = {}
        self.committed: dict[Digest, float] = {}  # when (time.time()); tests may age them
        # When set: commits wait for it between the verdict and publishing (a slow disk).
        self.publish_gate: asyncio.Event | None = None
        # When set: writes are taken but not done until it is (a disk that lags).
        self.write_gate: asyncio.Event | None = None
        self.readers: list[MemoryStagedReader] = []
        self.chunk_size = chunk_size
        self._closed = False

    def __repr__(self) -> str:
        return f"<MemoryBlobStore {len(self.blobs)} blobs>"

    async def _ready(self) -> None:
        await asyncio.sleep(0)
        self._check_open()

    def _check_open(self) -> None:
        if self._closed:
            raise StorageError("the blob store is closed")

    async def close(self) -> None:
        self._closed = True

    async def stat(self, digest: Digest) -> BlobInfo | None:
        await self._ready()
        data = self.blobs.get(digest)
        if data is None:
            return None
        return BlobInfo(digest, len(data), self.committed.get(digest))

    async def delivery(self, digest: Digest) -> Delivery:
        return Stream()  # no local files: the server streams it from open()

    async def open(
        self, digest: Digest, start: int = 0, end: int | None = None
    ) -> AsyncIterator[bytes]:
        await self._ready()
        data = self.blobs.get(digest)
        if data is None:
            raise StorageError(f"cannot open {digest}: not found")
        stop = len(data) if end is None else min(end, len(data))
        for offset in range(start, stop, self.chunk_size):
            yield data[offset : min(offset + self.chunk_size, stop)]
            await self._ready()

    async def read_all(self, digest: Digest, limit: int) -> bytes | None:
        await self._ready()
        data = self.blobs.get(digest)
        if data is not None and len(data) > limit:
            raise StorageError(f"{digest} is larger than {limit} bytes")
        return data

    async def begin_write(self) -> MemoryStagedBlob:
        await self._ready()
        return MemoryStagedBlob(self)

    async def verify(
        self, digest: Digest, progress: Callable[[int], None] | None = None
    ) -> tuple[bool, int]:
        await self._ready()
        data = self.blobs.get(digest)
        if data is None:
            return False, 0
        if progress is not None and data:
            progress(len(data))
        return hashlib.new(digest.algorithm, data).hexdigest() == digest.hex, len(data)

    async def delete(self, digest: Digest) -> bool:
        await self._ready()
        self.committed.pop(digest, None)
        return self.blobs.pop(digest, None) is not None

    async def iter_digests(self) -> AsyncIterator[Digest]:
        await self._ready()
        for digest in list(self.blobs):
            yield digest


class MemoryStagedBlob:
    """A write in progress: a buffer, published into the store's dict on commit."""

    def __init__(self, store: MemoryBlobStore) -> None:
        self._store = store
        self._buffer = bytearray()
        self._closed = False

    def __repr__(self) -> str:
        return f"<staged in memory {len(self._buffer)} bytes>"

    @property
    def written(self) -> int:
        return len(self._buffer)

    async def write(self, *pieces: bytes) -> None:
        # Taken at the call, in call order, whole (as the filesystem store's queue does).
        self._store._check_open()
        if self._closed:
            raise StorageError("write to a closed staged blob")
        for data in pieces:
            self._buffer += data
        await self._store._ready()
        if self._store.write_gate is not None:
            await self._store.write_gate.wait()

    def reader(self) -> MemoryStagedReader:
        if self._closed:
            raise StorageError("staged blob already closed")
        reader = MemoryStagedReader(self._buffer)
        self._store.readers.append(reader)
        return reader

    async def commit(
        self,
        expected: Digest,
        size: int | None = None,
        verified: Callable[[], None] | None = None,
    ) -> BlobInfo:
        await self._store._ready()
        if self._closed:
            raise StorageError("commit of a closed staged blob")
        self._closed = True
        data, self._buffer = bytes(self._buffer), bytearray()  # readers keep the old one
        actual = Digest(expected.algorithm, hashlib.new(expected.algorithm, data).hexdigest())
        if actual != expected or (size is not None and size != len(data)):
            raise DigestMismatch(expected, actual, len(data), size)
        if verified is not None:
            verified()
        if self._store.publish_gate is not None:
            await self._store.publish_gate.wait()
        await self._store._ready()  # publishing takes a moment of its own
        self._store.blobs[expected] = data
        self._store.committed[expected] = now = time.time()
        return BlobInfo(expected, len(data), now)

    async def abort(self) -> None:
        self._closed = True
        self._buffer = bytearray()  # readers keep the old one


class MemoryStagedReader:
    def __init__(self, buffer: bytearray) -> None:
        self._buffer: bytearray | None = buffer

    async def read(self, offset: int, size: int) -> bytes:
        await asyncio.sleep(0)
        if self._buffer is None:
            raise StorageError("read of a closed staged reader")
        return bytes(self._buffer[offset : offset + size])

    @property
    def closed(self) -> bool:
        return self._buffer is None

    def close(self) -> None:
        self._buffer = None
