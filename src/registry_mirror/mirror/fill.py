"""A blob fill: one upstream download per digest, streamed to every waiting client.

The fill runs as its own task, independent of the clients: it writes into a
staged blob (hashing as it goes) and commits only when digest and size match.
Clients — the first one included — read the staged bytes as they land, so time
to first byte does not depend on the blob size, and a client that arrives late
starts from the beginning of the file without a second download. If the fill
fails, every follower's stream raises :class:`FillFailed` and their responses
are aborted, never completed with bad data.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Final

from registry_mirror.mirror.direct import DirectBlob
from registry_mirror.mirror.errors import FillFailed, Uncacheable
from registry_mirror.mirror.routing import Route
from registry_mirror.reference import Digest
from registry_mirror.storage import (
    BlobInfo,
    BlobStore,
    DigestMismatch,
    StagedBlob,
    StagedReader,
    StorageError,
)
from registry_mirror.upstream import (
    UpstreamDigestMismatch,
    UpstreamError,
    UpstreamNotFound,
    UpstreamProtocolError,
    UpstreamUnavailable,
)

__all__ = ["BlobFill", "FillFailed", "Uncacheable"]

log = logging.getLogger(__name__)

MAX_ATTEMPTS: Final = 3
READ_CHUNK: Final = 256 * 1024
# The latest chunks written stay in memory too: a client at the edge of the download
# (the first one, usually) takes them from there, without reading the staged file back.
RECENT_BYTES: Final = 512 * 1024  # two chunks: bounded however many fills run at once


class BlobFill:
    def __init__(
        self,
        digest: Digest,
        route: Route,
        store: BlobStore,
        on_commit: Callable[[Route, Digest, BlobInfo], Awaitable[None]],
    ) -> None:
        self.digest = digest
        self.route = route
        self.repo = route.repo
        self._upstream = route.upstream
        self._store = store
        self._on_commit = on_commit
        self._staged: StagedBlob | None = None
        self.size: int | None = None
        self.written = 0
        self._recent: deque[tuple[int, bytes]] = deque()  # (offset, chunk), oldest first
        self._recent_bytes = 0
        self.done = False
        self.error: BaseException | None = None
        self.verified = False  # the content matches its digest (published or not yet)
        self.committed = False  # verified and published in the store
        self._answered = False  # upstream accepted the download: errors now abort streams
        self._ready = asyncio.Event()
        self._verdict = asyncio.Event()  # set when verified, or when the fill ended
        self._progress = asyncio.Condition()
        self.task: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        state = "failed" if self.error else "done" if self.done else "filling"
        return f"<BlobFill {self.digest} via {self.repo}: {state} {self.written}/{self.size}>"

    def start(self) -> asyncio.Task[None]:
        self.task = asyncio.ensure_future(self._run())
        return self.task

    async def ready(self) -> int | None:
        """Wait until upstream answered; the blob size if known. Raises the upstream error."""
        await self._ready.wait()
        if self.error is not None and (not self._answered or isinstance(self.error, Uncacheable)):
            raise self.error
        return self.size

    async def _run(self) -> None:
        try:
            self._staged = staged = await self._store.begin_write()
        except StorageError as exc:
            await self._finish(Uncacheable(str(exc)))
            return
        try:
            await self._download(staged)
            info = await staged.commit(self.digest, self.size, verified=self._verified)
            self.committed = True
            await self._on_commit(self.route, self.digest, info)
            log.info("cached %s (%d bytes) via %s", self.digest, info.size, self.route)
            await self._finish(None)
        except DigestMismatch as exc:
            log.error("discarded %s from upstream: %s", self.digest, exc)
            await self._finish(UpstreamDigestMismatch(str(exc)))
        except StorageError as exc:
            await staged.abort()
            # Nothing sent yet: the clients can still be served straight from upstream.
            await self._finish(Uncacheable(str(exc)) if self.written == 0 else exc)
        except UpstreamError as exc:
            level = logging.INFO if isinstance(exc, UpstreamNotFound) else logging.WARNING
            log.log(level, "fill of %s failed: %s", self.digest, exc)
            await staged.abort()
            await self._finish(exc)
        except BaseException as exc:
            await staged.abort()
            await self._finish(exc)
            raise

    async def _download(self, staged: StagedBlob) -> None:
        attempt = 0
        while True:
            attempt += 1
            try:
                stream = await self._upstream.get_blob(self.repo, self.digest, self.written)
            except UpstreamError as exc:
                if self.written and isinstance(exc, UpstreamUnavailable) and attempt < MAX_ATTEMPTS:
                    continue
                raise
            try:
                if self.size is None:
                    self.size = stream.size
                elif stream.size is not None and stream.size != self.size:
                    raise UpstreamProtocolError("blob size changed between attempts")
                skip = self.written - stream.offset  # >0 when a resume was answered with 200
                async for received in stream.chunks():
                    chunk = received
                    if skip > 0:
                        if len(chunk) <= skip:
                            skip -= len(chunk)
                            continue
                        chunk = chunk[skip:]
                        skip = 0
                    if self.size is not None and self.written + len(chunk) > self.size:
                        raise UpstreamDigestMismatch(
                            f"upstream sent more than the {self.size} bytes announced"
                        )
                    await staged.write(chunk)
                    self._remember(self.written, chunk)
                    self.written += len(chunk)
                    self._answer()  # clients start once the first bytes are safely staged
                    async with self._progress:
                        self._progress.notify_all()
            except UpstreamUnavailable as exc:
                if attempt >= MAX_ATTEMPTS:
                    raise
                log.info("resuming %s at %d after: %s", self.digest, self.written, exc)
                continue
            finally:
                stream.close()
            if self.size is None or self.written >= self.size:
                self._answer()
                return
            if attempt >= MAX_ATTEMPTS:
                raise UpstreamDigestMismatch(
                    f"upstream ended {self.digest} at {self.written} of {self.size} bytes"
                )

    def _remember(self, offset: int, chunk: bytes) -> None:
        self._recent.append((offset, chunk))
        self._recent_bytes += len(chunk)
        while self._recent_bytes > RECENT_BYTES and len(self._recent) > 1:
            _, old = self._recent.popleft()
            self._recent_bytes -= len(old)

    def _from_memory(self, offset: int, size: int) -> bytes | None:
        """Up to ``size`` bytes at ``offset`` if they are among the latest chunks."""
        for start, chunk in reversed(self._recent):
            if start <= offset < start + len(chunk):
                if offset == start and size >= len(chunk):
                    return chunk
                return chunk[offset - start : offset - start + size]
            if start + len(chunk) <= offset:
                return None
        return None

    def _verified(self) -> None:
        """The verdict on the digest: clients may finish their responses now, while the
        store makes the blob durable and publishes it."""
        self.verified = True
        self._verdict.set()

    def _answer(self) -> None:
        if not self._answered:
            self._answered = True
            self._ready.set()

    async def _finish(self, error: BaseException | None) -> None:
        self.error = error
        self.done = True
        self._ready.set()
        self._verdict.set()
        async with self._progress:
            self._progress.notify_all()

    async def stream(self, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
        """Bytes ``[start, end)`` as they arrive; raises FillFailed if the fill fails.

        If the *store* fails mid-way (disk full), the client is not cut off: it goes on
        straight from upstream where it stands, still verified when it takes the whole
        blob (the bytes already sent are re-read from its handle on the staged file).
        """
        staged = self._staged
        if staged is None:
            raise FillFailed(str(self.error or "fill did not start"))
        try:
            reader = staged.reader()
        except StorageError as exc:
            if self.committed:
                # Committed between the lookup and now: the verified file is there.
                try:
                    async for chunk in self._store.open(self.digest, start, end):
                        yield chunk
                except StorageError as gone:
                    raise FillFailed(str(gone)) from gone
                return
            raise FillFailed(str(self.error or exc)) from exc
        sent = start  # everything before this offset has been yielded
        try:
            while end is None or sent < end:
                if self.error is not None:
                    break
                available = self.written
                if sent < available:
                    size = min(READ_CHUNK, available - sent)
                    if end is not None:
                        size = min(size, end - sent)
                    chunk = self._from_memory(sent, size) or await reader.read(sent, size)
                    if not chunk:
                        raise FillFailed("staged file shorter than written")
                    if sent + len(chunk) in (end, self.size):
                        # The last bytes of a response wait for the verdict on the digest:
                        # a client never receives a complete response of unverified data.
                        await self._verdict.wait()
                        if not self.verified:
                            break
                    sent += len(chunk)
                    yield chunk
                    continue
                if self.done:
                    break
                await self._wait_progress(sent)
            else:
                return
            if self.error is None:
                return
            if not isinstance(self.error, StorageError):
                raise FillFailed(str(self.error))
            async for chunk in self._continue_direct(reader, start, sent, end):
                yield chunk
        finally:
            reader.close()

    async def _continue_direct(
        self, reader: StagedReader, start: int, sent: int, end: int | None
    ) -> AsyncIterator[bytes]:
        """Go on from upstream at ``sent`` after the store failed under this fill."""
        whole = start == 0 and end in (None, self.size)
        hasher = None
        if whole:
            hasher = self.digest.hasher()
            offset = 0
            while offset < sent:
                chunk = await reader.read(offset, min(READ_CHUNK, sent - offset))
                if not chunk:
                    raise FillFailed("staged file shorter than sent")
                hasher.update(chunk)
                offset += len(chunk)
        try:
            upstream = await self._upstream.get_blob(self.repo, self.digest, sent)
        except UpstreamError as exc:
            raise FillFailed(str(exc)) from exc
        # The continuation is verified together with the bytes already sent: the client
        # that takes the whole blob never completes a response of unverified data.
        direct = DirectBlob(self.digest, upstream, hasher=hasher, hashed=sent if whole else 0)
        async for chunk in direct.stream(sent, end):
            yield chunk

    async def _wait_progress(self, offset: int) -> None:
        def moved() -> bool:
            return self.written > offset or self.done

        async with self._progress:
            await self._progress.wait_for(moved)
