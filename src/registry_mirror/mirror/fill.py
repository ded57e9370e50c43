"""A blob fill: one upstream download per digest, streamed to every waiting client.

The fill runs as its own task, independent of the clients. What it receives is
kept in memory until written: clients at the edge of the download (the first one,
usually) take it from there at once, while the staged blob is written and hashed
behind them in batches queued to the store (applied in order, several in flight),
and committed only when digest and size match. A client that arrives late starts from the
beginning of the staged file without a second download. The bytes not yet written
are bounded per fill and for all fills together: past that, the download waits for
the disk. If the fill fails, every follower's stream raises :class:`FillFailed` and
their responses are aborted, never completed with bad data.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Final

from registry_mirror.metrics import Metrics
from registry_mirror.mirror.direct import DirectBlob
from registry_mirror.mirror.errors import FillFailed, Uncacheable
from registry_mirror.mirror.routing import Route
from registry_mirror.reference import Digest
from registry_mirror.storage import (
    BlobInfo,
    BlobStore,
    DigestMismatch,
    LocalStagedReader,
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

__all__ = ["BlobFill", "FileSpan", "FillFailed", "Uncacheable", "WriteBudget"]

log = logging.getLogger(__name__)

MAX_ATTEMPTS: Final = 3
READ_CHUNK: Final = 256 * 1024  # a follower's read of the staged file
WRITE_BATCH: Final = 1024 * 1024  # a write starts once this much is received and unwritten
MAX_BATCH: Final = 4 * 1024 * 1024  # what one write takes at most
MAX_UNWRITTEN: Final = 8 * 1024 * 1024  # per fill: the download waits for the disk beyond
# The latest chunks written stay in memory too, for clients just behind the edge.
RECENT_BYTES: Final = 512 * 1024
# A range of at most FAR_RANGE bytes starting more than FAR_AHEAD past the download's
# edge is asked of upstream by itself rather than waiting for the download to get there.
FAR_AHEAD: Final = 4 * 1024 * 1024
FAR_RANGE: Final = 16 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class FileSpan:
    """``size`` bytes at ``offset`` of a local file (a staged blob's), to send as is."""

    fd: int
    offset: int
    size: int

    def __len__(self) -> int:
        return self.size


class WriteBudget:
    """Received bytes not yet written, all fills together: past ``limit``, a fill's
    download waits for its own write in flight (so it never waits on another fill)."""

    def __init__(self, limit: int = 32 * 1024 * 1024) -> None:
        self.limit = limit
        self.used = 0

    @property
    def exhausted(self) -> bool:
        return self.used > self.limit


class BlobFill:
    def __init__(
        self,
        digest: Digest,
        route: Route,
        store: BlobStore,
        on_commit: Callable[[Route, Digest, BlobInfo], Awaitable[None]],
        budget: WriteBudget | None = None,
        *,
        metrics: Metrics | None = None,
    ) -> None:
        self.digest = digest
        self.route = route
        self.repo = route.repo
        self._upstream = route.upstream
        self._store = store
        self._on_commit = on_commit
        self._staged: StagedBlob | None = None
        self._budget = budget or WriteBudget()
        self.size: int | None = None
        self.received = 0  # bytes from upstream, readable by clients (memory or staged file)
        self.written = 0  # of which in the staged file (hashed)
        # Chunks in memory: every one not yet written, then RECENT_BYTES written ones.
        self._chunks: deque[tuple[int, bytes]] = deque()  # (offset, chunk), oldest first
        # Writes in flight, oldest first, with their sizes; queued up to ``_queued``.
        self._writes: deque[tuple[asyncio.Future[None], int]] = deque()
        self._queued = 0
        self.done = False
        self.error: BaseException | None = None
        self.verified = False  # the content matches its digest (published or not yet)
        self.committed = False  # verified and published in the store
        self._answered = False  # upstream accepted the download: errors now abort streams
        self._ready = asyncio.Event()
        self._verdict = asyncio.Event()  # set when verified, or when the fill ended
        self._moved = asyncio.Event()  # set (and replaced) when bytes arrive or the fill ends
        self.task: asyncio.Task[None] | None = None
        self.clients = 0  # responses taking bytes from this fill now
        self._metrics = metrics

    def __repr__(self) -> str:
        state = "failed" if self.error else "done" if self.done else "filling"
        return f"<BlobFill {self.digest} via {self.repo}: {state} {self.received}/{self.size}>"

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
            await self._write_received(staged, final=True)
            info = await staged.commit(self.digest, self.size, verified=self._verified)
            self.committed = True
            await self._on_commit(self.route, self.digest, info)
            log.info("cached %s (%d bytes) via %s", self.digest, info.size, self.route)
            self._count("cached")
            await self._finish(None)
        except DigestMismatch as exc:
            log.error("discarded %s from upstream: %s", self.digest, exc)
            self._count("failed")
            await self._finish(UpstreamDigestMismatch(str(exc)))
        except StorageError as exc:
            await self._stop_writing()
            await staged.abort()
            self._count("uncached")
            # Nothing received yet: the clients can still be served straight from upstream.
            # Later, each goes on from upstream where it stands (``stream``).
            await self._finish(exc if self._answered else Uncacheable(str(exc)))
        except UpstreamError as exc:
            level = logging.INFO if isinstance(exc, UpstreamNotFound) else logging.WARNING
            log.log(level, "fill of %s failed: %s", self.digest, exc)
            await self._stop_writing()
            await staged.abort()
            self._count("failed")
            await self._finish(exc)
        except BaseException as exc:
            await self._stop_writing()
            await staged.abort()
            self._count("failed")
            await self._finish(exc)
            raise
        finally:
            self._budget.used -= self.received - self.written

    def _count(self, result: str) -> None:
        """The fill ended: ``cached``, ``failed`` or ``uncached`` (the store failed)."""
        if self._metrics is not None:
            self._metrics.fill_done(self.route.entry.name, result)

    async def _download(self, staged: StagedBlob) -> None:
        attempt = 0
        while True:
            attempt += 1
            try:
                stream = await self._upstream.get_blob(self.repo, self.digest, self.received)
            except UpstreamError as exc:
                resumable = self.received and isinstance(exc, UpstreamUnavailable)
                if resumable and attempt < MAX_ATTEMPTS:
                    continue
                raise
            try:
                if self.size is None:
                    self.size = stream.size
                elif stream.size is not None and stream.size != self.size:
                    raise UpstreamProtocolError("blob size changed between attempts")
                skip = self.received - stream.offset  # >0 when a resume was answered with 200
                async for received in stream.chunks():
                    chunk = received
                    if skip > 0:
                        if len(chunk) <= skip:
                            skip -= len(chunk)
                            continue
                        chunk = chunk[skip:]
                        skip = 0
                    if self.size is not None and self.received + len(chunk) > self.size:
                        raise UpstreamDigestMismatch(
                            f"upstream sent more than the {self.size} bytes announced"
                        )
                    first = not self._answered
                    if first:
                        # The store takes the first bytes before any client is answered:
                        # one that cannot (a full disk) leaves the clients to upstream.
                        await staged.write(chunk)
                    self._receive(chunk, written=first)
                    await self._write_received(staged)
            except UpstreamUnavailable as exc:
                if attempt >= MAX_ATTEMPTS:
                    raise
                log.info("resuming %s at %d after: %s", self.digest, self.received, exc)
                continue
            finally:
                stream.close()
            if self.size is None or self.received >= self.size:
                self._answer()
                return
            if attempt >= MAX_ATTEMPTS:
                raise UpstreamDigestMismatch(
                    f"upstream ended {self.digest} at {self.received} of {self.size} bytes"
                )

    def _receive(self, chunk: bytes, *, written: bool = False) -> None:
        """A chunk from upstream: in memory for the clients at once, written later
        (unless ``written`` already)."""
        self._chunks.append((self.received, chunk))
        self.received += len(chunk)
        if written:
            self.written = self._queued = self.received
        else:
            self._budget.used += len(chunk)
        self._answer()
        self._wake()

    def _wake(self) -> None:
        moved, self._moved = self._moved, asyncio.Event()
        moved.set()

    async def _write_received(self, staged: StagedBlob, *, final: bool = False) -> None:
        """Queue the received bytes to the store in batches, behind the download (the
        store applies them in order); wait for the oldest once too much is unwritten (for
        this fill or all fills), or, ``final``, for all. A failed write raises here."""
        self._collect()
        while True:
            unqueued = self.received - self._queued
            if unqueued == 0 or (unqueued < WRITE_BATCH and not final):
                break
            pieces, size = self._batch_at(self._queued)
            self._queued += size
            self._writes.append((asyncio.ensure_future(staged.write(*pieces)), size))
        while self._writes and (
            final or self.received - self.written > MAX_UNWRITTEN or self._budget.exhausted
        ):
            await asyncio.wait([self._writes[0][0]])
            self._collect()

    def _batch_at(self, offset: int) -> tuple[list[bytes], int]:
        """The received chunks from ``offset`` on, up to MAX_BATCH bytes."""
        pieces: list[bytes] = []
        size = 0
        for start, chunk in self._chunks:
            if start < offset:
                continue
            pieces.append(chunk)
            size += len(chunk)
            if size >= MAX_BATCH:
                break
        return pieces, size

    def _collect(self) -> None:
        """Account for the writes done, in order; raise the first failure."""
        while self._writes and self._writes[0][0].done():
            write, size = self._writes.popleft()
            write.result()
            self.written += size
            self._budget.used -= size
        # The written chunks beyond the latest RECENT_BYTES leave memory (the chunks are
        # contiguous: what memory holds of the written bytes starts at the first one).
        while self._chunks:
            offset, chunk = self._chunks[0]
            if offset + len(chunk) > self.written or self.written - offset <= RECENT_BYTES:
                break
            self._chunks.popleft()

    async def _stop_writing(self) -> None:
        """Let the writes in flight end (a failure among them is the fill's already)."""
        writes = [write for write, _ in self._writes]
        self._writes.clear()
        if writes:
            await asyncio.wait(writes)
            for write in writes:
                if not write.cancelled():
                    write.exception()  # retrieved

    def _from_memory(self, offset: int, size: int) -> bytes | None:
        """Up to ``size`` bytes at ``offset`` if they are still in memory."""
        for start, chunk in reversed(self._chunks):
            if start <= offset < start + len(chunk):
                if offset == start and size >= len(chunk):
                    return chunk  # the usual case: whole chunks, no copy
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
        self._wake()

    async def stream(self, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
        """Bytes ``[start, end)`` as they arrive; raises FillFailed if the fill fails
        (see :meth:`pieces`)."""
        async with contextlib.aclosing(self.pieces(start, end, spans=False)) as pieces:
            async for piece in pieces:
                assert isinstance(piece, bytes)
                yield piece

    async def pieces(
        self, start: int = 0, end: int | None = None, *, spans: bool = True
    ) -> AsyncGenerator[bytes | FileSpan, None]:
        """Bytes ``[start, end)`` as they arrive; raises FillFailed if the fill fails.
        With ``spans``, the part already in a local staged file and no longer in memory
        (a follower behind the download) comes as :class:`FileSpan` regions of it, to
        leave by ``sendfile``; the caller sends each before asking for the next piece.

        If the *store* fails mid-way (disk full), the client is not cut off: it goes on
        straight from upstream where it stands, still verified when it takes the whole
        blob (the bytes already sent are re-read from its handle on the staged file).

        A short range far ahead of the download (a lazy-pulling client reading a few KiB
        of a big layer) is asked of upstream by itself, while the fill goes on; if that
        request fails before any byte, the range waits for the fill instead.
        """
        self.clients += 1  # counted for the metrics while this response takes bytes
        try:
            async with contextlib.aclosing(self._pieces(start, end, spans)) as pieces:
                async for piece in pieces:
                    yield piece
        finally:
            self.clients -= 1

    async def _pieces(
        self, start: int, end: int | None, spans: bool
    ) -> AsyncGenerator[bytes | FileSpan, None]:
        if self._far_ahead(start, end):
            assert end is not None
            try:
                upstream = await self._upstream.get_blob(self.repo, self.digest, start, end)
            except UpstreamError as exc:
                log.info("range %d-%d of %s follows the fill: %s", start, end, self.digest, exc)
            else:
                direct = DirectBlob(self.digest, upstream)
                try:
                    async for chunk in direct.stream(start, end):
                        yield chunk
                finally:
                    direct.close()
                return
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
        whole = start == 0 and end in (None, self.size)
        try:
            while end is None or sent < end:
                if self.error is not None:
                    break
                available = self.received
                if sent < available:
                    size = available - sent if end is None else min(available, end) - sent
                    piece: bytes | FileSpan | None = self._from_memory(sent, size)
                    if piece is None and spans and isinstance(reader, LocalStagedReader):
                        piece = FileSpan(reader.fileno(), sent, min(size, self.written - sent))
                    if piece is None:
                        piece = await reader.read(sent, min(READ_CHUNK, size))
                    length = len(piece)
                    if not length:
                        raise FillFailed("staged file shorter than written")
                    if whole and sent + length == self.size:
                        # The last bytes of the whole blob wait for the verdict on the
                        # digest: a client never completes a response of unverified data.
                        # (A range is answered as soon as its bytes are here.)
                        await self._verdict.wait()
                        if not self.verified:
                            break
                    sent += length
                    yield piece
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

    def _far_ahead(self, start: int, end: int | None) -> bool:
        """A short range that begins well past what the download has received."""
        return (
            end is not None
            and not self.done
            and end - start <= FAR_RANGE
            and start - self.received > FAR_AHEAD
        )

    async def _continue_direct(
        self, reader: StagedReader, start: int, sent: int, end: int | None
    ) -> AsyncIterator[bytes]:
        """Go on from upstream at ``sent`` after the store failed under this fill."""
        whole = start == 0 and end in (None, self.size)
        hasher = None
        if whole:
            # The bytes sent are in the staged file up to ``written``, in memory after.
            hasher = self.digest.hasher()
            offset = 0
            while offset < sent:
                size = min(READ_CHUNK, sent - offset)
                chunk = self._from_memory(offset, size)
                if chunk is None and offset < self.written:
                    chunk = await reader.read(offset, min(size, self.written - offset))
                if not chunk:
                    raise FillFailed("the bytes sent are neither staged nor in memory")
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
        while self.received <= offset and not self.done:
            await self._moved.wait()
