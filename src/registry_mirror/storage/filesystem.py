"""BlobStore on a local filesystem.

Layout (the only place it is spelled out)::

    ROOT/blobs/sha256/ab/abcdef…   committed content, named by digest
    ROOT/staging/<random>.part      writes in progress; removed at start

A write goes to ``staging``, is hashed while it streams, fsynced, and renamed
into ``blobs`` only when digest and size match. Every file operation runs in a
worker thread of the store's own, never the loop's default pool, so a slow disk
cannot starve anything else that uses threads: writes and fsyncs on a few
threads, reads (cache-hit stats and opens, followers' reads) on others, and the
walks over the whole cache (measuring, listing, re-hashing) on one of their own.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import os
import secrets
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Final, TypeVar

from registry_mirror.reference import Digest, parse_digest
from registry_mirror.storage.base import BlobInfo, Delivery, DigestMismatch, LocalFile, StorageError

__all__ = ["FilesystemBlobStore"]

READ_CHUNK: Final = 1024 * 1024
WRITE_THREADS: Final = 4  # writes, fsyncs, commits, deletes
READ_THREADS: Final = 8  # stat, open, reads of cache hits and of fills in progress
BLOCK: Final = 4096  # allocation unit, until the filesystem says
IOV_MAX: Final = 1024  # buffers per writev

T = TypeVar("T")


class FilesystemBlobStore:
    def __init__(
        self, root: Path, *, write_threads: int = WRITE_THREADS, read_threads: int = READ_THREADS
    ) -> None:
        self.root = root
        self.blobs_dir = root / "blobs"
        self.staging_dir = root / "staging"
        # Threads start on first use and end with close().
        self._writer = ThreadPoolExecutor(write_threads, thread_name_prefix="store-write")
        self._reader = ThreadPoolExecutor(read_threads, thread_name_prefix="store-read")
        self._scanner = ThreadPoolExecutor(1, thread_name_prefix="store-scan")
        self._closing = threading.Event()  # long walks stop early when the store closes
        self._block = BLOCK

    async def _write_io(self, fn: Callable[..., T], *args: object) -> T:
        return await self._in(self._writer, fn, *args)

    async def _read_io(self, fn: Callable[..., T], *args: object) -> T:
        return await self._in(self._reader, fn, *args)

    async def _scan_io(self, fn: Callable[..., T], *args: object) -> T:
        return await self._in(self._scanner, fn, *args)

    @staticmethod
    async def _in(executor: ThreadPoolExecutor, fn: Callable[..., T], *args: object) -> T:
        try:
            future = asyncio.get_running_loop().run_in_executor(executor, fn, *args)
        except RuntimeError as exc:  # shut down
            raise StorageError("the blob store is closed") from exc
        return await future

    def _check_open(self) -> None:
        """Called between the steps of a long walk: a closing store stops it."""
        if self._closing.is_set():
            raise StorageError("the blob store is closed")

    async def close(self) -> None:
        """Finish the file operations under way and stop the store's threads."""

        self._closing.set()

        def shutdown() -> None:
            for executor in (self._reader, self._scanner):
                executor.shutdown(wait=True, cancel_futures=True)
            self._writer.shutdown(wait=True)  # staged writes end in a commit or an abort

        await asyncio.to_thread(shutdown)

    def path_for(self, digest: Digest) -> Path:
        return self.blobs_dir / digest.algorithm / digest.hex[:2] / digest.hex

    def prepare(self) -> None:
        """Create the layout (blocking; called once at start, off the loop)."""
        try:
            self.blobs_dir.mkdir(parents=True, exist_ok=True)
            self.staging_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageError(f"cannot create storage under {self.root}: {exc.strerror}") from exc
        if not os.access(self.staging_dir, os.W_OK):
            raise StorageError(f"storage directory {self.root} is not writable")
        with contextlib.suppress(OSError):
            self._block = os.statvfs(self.blobs_dir).f_bsize or BLOCK

    async def stat(self, digest: Digest) -> BlobInfo | None:
        try:
            st = await self._read_io(os.stat, self.path_for(digest))
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StorageError(f"cannot stat {digest}: {exc.strerror}") from exc
        return BlobInfo(digest, st.st_size, st.st_mtime)

    async def delivery(self, digest: Digest) -> Delivery:
        return LocalFile(functools.partial(self.open_local, digest))

    async def open_local(self, digest: Digest) -> int:
        return await self._read_io(os.open, self.path_for(digest), os.O_RDONLY | os.O_CLOEXEC)

    async def open(
        self, digest: Digest, start: int = 0, end: int | None = None
    ) -> AsyncIterator[bytes]:
        try:
            fd = await self._read_io(os.open, self.path_for(digest), os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            raise StorageError(f"cannot open {digest}: {exc.strerror}") from exc
        try:
            offset = start
            while end is None or offset < end:
                size = READ_CHUNK if end is None else min(READ_CHUNK, end - offset)
                try:
                    chunk = await self._read_io(os.pread, fd, size, offset)
                except OSError as exc:
                    raise StorageError(f"cannot read {digest}: {exc.strerror}") from exc
                if not chunk:
                    break
                offset += len(chunk)
                yield chunk
        finally:
            os.close(fd)

    async def read_all(self, digest: Digest, limit: int) -> bytes | None:
        def read() -> bytes | None:
            try:
                with open(self.path_for(digest), "rb") as f:
                    data = f.read(limit + 1)
            except FileNotFoundError:
                return None
            if len(data) > limit:
                raise StorageError(f"{digest} is larger than {limit} bytes")
            return data

        try:
            return await self._read_io(read)
        except OSError as exc:
            raise StorageError(f"cannot read {digest}: {exc.strerror}") from exc

    async def verify(
        self, digest: Digest, progress: Callable[[int], None] | None = None
    ) -> tuple[bool, int]:
        def check() -> tuple[bool, int]:
            hasher = hashlib.new(digest.algorithm)
            length = 0
            with open(self.path_for(digest), "rb") as f:
                while chunk := f.read(READ_CHUNK):
                    self._check_open()
                    hasher.update(chunk)
                    length += len(chunk)
                    if progress is not None:
                        progress(len(chunk))
            return hasher.hexdigest() == digest.hex, length

        try:
            return await self._scan_io(check)
        except FileNotFoundError:
            return False, 0
        except OSError as exc:
            raise StorageError(f"cannot read {digest}: {exc.strerror}") from exc

    async def begin_write(self) -> _FilesystemStagedBlob:
        path = self.staging_dir / f"{secrets.token_hex(16)}.part"
        try:
            fd = await self._write_io(
                os.open, path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644
            )
        except OSError as exc:
            raise StorageError(f"cannot create a staging file: {exc.strerror}") from exc
        return _FilesystemStagedBlob(self, path, fd)

    async def delete(self, digest: Digest) -> bool:
        try:
            await self._write_io(os.unlink, self.path_for(digest))
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise StorageError(f"cannot delete {digest}: {exc.strerror}") from exc
        return True

    async def iter_digests(self) -> AsyncIterator[Digest]:
        def scan() -> list[Digest]:
            found: list[Digest] = []
            if not self.blobs_dir.is_dir():
                return found
            for algorithm in os.scandir(self.blobs_dir):
                if not algorithm.is_dir():
                    continue
                for prefix in os.scandir(algorithm.path):
                    self._check_open()
                    if not prefix.is_dir():
                        continue
                    for entry in os.scandir(prefix.path):
                        with contextlib.suppress(ValueError):
                            found.append(parse_digest(f"{algorithm.name}:{entry.name}"))
            return found

        for digest in await self._scan_io(scan):
            yield digest

    async def disk_usage(self) -> int:
        return (await self.census())[1]

    async def census(self) -> tuple[int, int]:
        def measure() -> tuple[int, int]:
            files = total = 0
            if not self.blobs_dir.is_dir():
                return 0, 0
            for algorithm in os.scandir(self.blobs_dir):
                for prefix in os.scandir(algorithm.path) if algorithm.is_dir() else ():
                    self._check_open()
                    for entry in os.scandir(prefix.path) if prefix.is_dir() else ():
                        with contextlib.suppress(FileNotFoundError):
                            total += entry.stat(follow_symlinks=False).st_blocks * 512
                            files += 1
            return files, total

        return await self._scan_io(measure)

    async def disk_sizes(self, digests: list[Digest]) -> dict[Digest, int]:
        def measure() -> dict[Digest, int]:
            sizes: dict[Digest, int] = {}
            for digest in digests:
                with contextlib.suppress(FileNotFoundError):
                    sizes[digest] = os.stat(self.path_for(digest)).st_blocks * 512
            return sizes

        return await self._scan_io(measure)

    async def free_space(self) -> int | None:
        try:
            st = await self._read_io(os.statvfs, self.root)
        except OSError:
            return None
        return st.f_bavail * st.f_frsize

    def allocated(self, size: int) -> int:
        return -(-size // self._block) * self._block

    def _leftovers(self, older_than: float) -> list[str]:
        """Names in staging last written more than ``older_than`` seconds ago, measured
        now (one vanishing meanwhile is fine)."""
        names: list[str] = []
        try:
            entries = list(os.scandir(self.staging_dir))
        except FileNotFoundError:
            return names
        now = time.time()
        for entry in entries:
            with contextlib.suppress(FileNotFoundError):
                if older_than <= 0 or now - entry.stat().st_mtime > older_than:
                    names.append(entry.name)
        return sorted(names)

    async def staging_leftovers(self, older_than: float) -> list[str]:
        return await self._scan_io(self._leftovers, older_than)

    async def clean_staging(self, older_than: float = 0.0) -> int:
        def clean() -> int:
            removed = 0
            for name in self._leftovers(older_than):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.staging_dir / name)
                    removed += 1
            return removed

        return await self._scan_io(clean)


class _Batch:
    """Pieces to write and hash; settled on the loop once both are done."""

    __slots__ = ("finished", "future", "parts_left", "pieces", "size")

    def __init__(self, pieces: tuple[bytes, ...], loop: asyncio.AbstractEventLoop) -> None:
        self.pieces = pieces
        self.size = sum(len(piece) for piece in pieces)
        self.future: asyncio.Future[None] = loop.create_future()  # the caller's answer
        self.finished: asyncio.Future[None] = loop.create_future()  # no worker holds it
        self.parts_left = 2  # the write and the hashing


class _FilesystemStagedBlob:
    """A staging file, renamed on commit. Writes are appended in call order and may
    overlap: a worker writes the queued batches back to back while another hashes them,
    so neither waits for the event loop between batches."""

    def __init__(self, store: FilesystemBlobStore, path: Path, fd: int) -> None:
        self._store = store
        self._path = path
        self._fd = fd
        self._hashers: dict[str, hashlib._Hash] = {"sha256": hashlib.sha256()}
        self._written = 0
        self._closed = False
        self._lock = asyncio.Lock()  # commit and abort
        self._mutex = threading.Lock()  # the queues, between the loop and the workers
        self._to_write: deque[_Batch] = deque()
        self._to_hash: deque[_Batch] = deque()
        self._draining = {"write": False, "hash": False}
        self._failed: OSError | None = None  # a write failed: the file has a hole
        self._pending: set[asyncio.Future[None]] = set()

    @property
    def written(self) -> int:
        return self._written

    def __repr__(self) -> str:
        return f"<staged {self._path.name} {self._written} bytes>"

    async def write(self, *pieces: bytes) -> None:
        if self._closed:
            raise StorageError("write to a closed staging file")
        if self._failed is not None:
            raise StorageError(f"cannot write staging file: {self._failed.strerror}")
        loop = asyncio.get_running_loop()
        batch = _Batch(pieces, loop)
        self._pending.add(batch.finished)
        batch.finished.add_done_callback(self._pending.discard)
        with self._mutex:
            self._to_write.append(batch)
            self._to_hash.append(batch)
            start = [kind for kind, running in self._draining.items() if not running]
            for kind in start:
                self._draining[kind] = True
        for kind in start:
            drain = self._drain_writes if kind == "write" else self._drain_hashes
            try:
                self._store._writer.submit(drain, loop)
            except RuntimeError as exc:  # shut down
                raise StorageError("the blob store is closed") from exc
        # A cancelled caller does not stop the batch: it is written (or fails) anyway.
        await asyncio.shield(batch.future)

    def _next(self, queue: deque[_Batch], kind: str) -> _Batch | None:
        with self._mutex:
            if queue:
                return queue.popleft()
            self._draining[kind] = False
            return None

    def _drain_writes(self, loop: asyncio.AbstractEventLoop) -> None:
        while (batch := self._next(self._to_write, "write")) is not None:
            error = None
            if self._failed is None:
                try:
                    self._write_all(batch.pieces)
                except OSError as exc:
                    self._failed = exc
            if self._failed is not None:
                error = StorageError(f"cannot write staging file: {self._failed.strerror}")
            self._part_done(loop, batch, error)

    def _drain_hashes(self, loop: asyncio.AbstractEventLoop) -> None:
        while (batch := self._next(self._to_hash, "hash")) is not None:
            for hasher in self._hashers.values():
                for piece in batch.pieces:
                    hasher.update(piece)
            self._part_done(loop, batch, None)

    def _write_all(self, pieces: tuple[bytes, ...]) -> None:
        views = [memoryview(piece) for piece in pieces if piece]
        while views:
            n = os.writev(self._fd, views[:IOV_MAX])
            while views and n >= len(views[0]):
                n -= len(views[0])
                views.pop(0)
            if n:
                views[0] = views[0][n:]

    def _part_done(
        self, loop: asyncio.AbstractEventLoop, batch: _Batch, error: StorageError | None
    ) -> None:
        with self._mutex:
            batch.parts_left -= 1
            last = batch.parts_left == 0
        if error is not None or last:
            loop.call_soon_threadsafe(self._settle, batch, error, last)

    def _settle(self, batch: _Batch, error: StorageError | None, last: bool) -> None:
        if not batch.future.done():
            if error is not None:
                batch.future.set_exception(error)
                batch.future.exception()  # retrieved: the caller may be gone
            else:
                self._written += batch.size
                batch.future.set_result(None)
        if last:
            batch.finished.set_result(None)

    async def _quiet(self) -> None:
        """Until no worker holds a batch (the descriptor is never closed under one)."""
        while self._pending:
            await asyncio.wait(list(self._pending))

    def reader(self) -> _StagingReader:
        if self._closed:
            raise StorageError("staging file already closed")
        return _StagingReader(self._store, os.dup(self._fd))

    async def commit(
        self,
        expected: Digest,
        size: int | None = None,
        verified: Callable[[], None] | None = None,
    ) -> BlobInfo:
        async with self._lock:
            if self._closed:
                raise StorageError("commit of a closed staging file")
            await self._quiet()
            if self._failed is not None:
                await self._discard()
                raise StorageError(f"cannot write staging file: {self._failed.strerror}")
            target = self._store.path_for(expected)

            def digest() -> Digest:
                if expected.algorithm not in self._hashers:
                    # Not hashed while streaming (sha512 is rare): hash the file now.
                    hasher = hashlib.new(expected.algorithm)
                    offset = 0
                    while chunk := os.pread(self._fd, READ_CHUNK, offset):
                        hasher.update(chunk)
                        offset += len(chunk)
                else:
                    hasher = self._hashers[expected.algorithm]
                return Digest(expected.algorithm, hasher.hexdigest())

            def publish() -> None:
                os.fsync(self._fd)
                target.parent.mkdir(parents=True, exist_ok=True)
                os.replace(self._path, target)
                dir_fd = os.open(target.parent, os.O_RDONLY)
                try:
                    os.fsync(dir_fd)
                finally:
                    os.close(dir_fd)

            try:
                actual = await self._store._write_io(digest)
                if actual != expected or (size is not None and size != self._written):
                    await self._discard()
                    raise DigestMismatch(expected, actual, self._written, size)
                if verified is not None:
                    verified()  # the verdict, before the (slower) durability
                await self._store._write_io(publish)
            except OSError as exc:
                await self._discard()
                raise StorageError(f"cannot commit {expected}: {exc.strerror}") from exc
            self._closed = True
            os.close(self._fd)
            return BlobInfo(expected, self._written, time.time())

    async def abort(self) -> None:
        async with self._lock:
            if not self._closed:
                await self._discard()

    async def _discard(self) -> None:
        self._closed = True
        await self._quiet()

        def discard() -> None:
            os.close(self._fd)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._path)

        await self._store._write_io(discard)


class _StagingReader:
    """Its own descriptor on a staging file: valid after the rename or unlink."""

    def __init__(self, store: FilesystemBlobStore, fd: int) -> None:
        self._store = store
        self._fd = fd

    async def read(self, offset: int, size: int) -> bytes:
        try:
            return await self._store._read_io(os.pread, self._fd, size, offset)
        except OSError as exc:
            raise StorageError(f"cannot read staging file: {exc.strerror}") from exc

    def fileno(self) -> int:
        if self._fd < 0:
            raise StorageError("staging reader closed")
        return self._fd

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
