"""How a blob leaves: the store says (``BlobSource.delivery``). A cached file
(``LocalFile``) goes by sendfile on plain TCP, is streamed from ``store.open`` otherwise
(under TLS, or a store without local files); ``Redirect`` sends the client there (307);
a miss streams as its bytes arrive from upstream (a follower behind the download gets
what is already in the staged file by sendfile too, on plain TCP). Ranges, the write
timeout, a file evicted between the lookup and the open (asked for again), and a
connection cut rather than a response completed with bad or missing bytes. Every
descriptor, reader and upstream connection is released on every exit."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator
from typing import Final, TypeVar

from aiohttp import web

from registry_mirror.api.access_log import BODY_BYTES
from registry_mirror.api.errors import RegistryError
from registry_mirror.api.ranges import Unsatisfiable, parse_range
from registry_mirror.api.sendfile import SendfileReactor
from registry_mirror.mirror import BlobFill, BlobSource, FillFailed, Mirror, Route
from registry_mirror.mirror.direct import DirectBlob
from registry_mirror.mirror.fill import FileSpan
from registry_mirror.outcome import Outcome
from registry_mirror.reference import Digest
from registry_mirror.storage import LocalFile, Redirect, StorageError

__all__ = ["SENDFILE_KEY", "WRITE_TIMEOUT_KEY", "send_blob"]

log = logging.getLogger(__name__)

T = TypeVar("T")

SENDFILE_KEY: Final = web.AppKey("sendfile", SendfileReactor)
# How long one body write may wait for a client that takes nothing (http.write_timeout).
WRITE_TIMEOUT_KEY: Final = web.AppKey("write_timeout", float)


async def send_blob(
    request: web.Request,
    mirror: Mirror,
    route: Route,
    digest: Digest,
    headers: dict[str, str],
    *,
    outcome: Outcome | None = None,
) -> web.StreamResponse:
    """The answer to a blob GET (``headers`` already made): the whole blob or the asked
    range, from the cache, the store's redirect or upstream. A file evicted between the
    lookup and the open is asked for again (then through a fill). Every descriptor,
    reader and upstream connection is released on every exit."""
    for _ in range(2):
        source = await mirror.blob(route, digest, outcome)
        try:
            return await _serve_source(request, mirror, source, headers)
        except _Evicted:
            continue
        finally:
            if isinstance(source.live, DirectBlob):  # its upstream connection, always
                source.live.close()
    raise StorageError(f"{digest} disappeared from the cache twice while being opened")


class _Evicted(Exception):
    """The cached file went away between the lookup and the open."""


async def _serve_source(
    request: web.Request, mirror: Mirror, source: BlobSource, headers: dict[str, str]
) -> web.StreamResponse:
    """Nothing is opened before the range is known to be satisfiable."""
    digest = source.digest
    delivery = source.delivery
    if isinstance(delivery, Redirect):
        # The store serves it (object storage): the client follows, with its Range. Not
        # the blob's year-long Cache-Control: the URL it names may expire.
        moved = {"Location": delivery.url, "Docker-Content-Digest": str(digest)}
        return web.Response(status=307, headers=moved)
    span = _span(request, source.size)
    response = web.StreamResponse(status=200 if span is None else 206, headers=headers)
    if span is not None:
        response.headers["Content-Range"] = f"bytes {span[0]}-{span[1] - 1}/{source.size}"
        response.content_length = span[1] - span[0]
    elif source.size is not None:
        response.content_length = source.size
    start, end = span if span is not None else (0, source.size)
    with mirror.hold(digest):
        if delivery is None:
            return await _send_live(request, response, source, start, end)
        assert end is not None
        if isinstance(delivery, LocalFile) and _plain_tcp(request):
            try:
                fd = await _open_file(delivery)
            except FileNotFoundError:
                raise _Evicted from None
            return await _send_file(request, response, fd, start, end - start)
        chunks = mirror.store.open(digest, start, end)
        async with _closing(chunks):
            try:
                first = await anext(chunks, b"")
            except StorageError:
                if await mirror.store.stat(digest) is None:
                    raise _Evicted from None
                raise
            body = _after(first, chunks)
            async with _closing(body):
                return await _send_stream(request, response, body, str(digest), end - start)


@contextlib.asynccontextmanager
async def _closing(chunks: AsyncIterator[T]) -> AsyncIterator[AsyncIterator[T]]:
    """Close a byte stream (an async generator holding a descriptor or a reader) as
    soon as the response is done with it, not whenever it is garbage collected."""
    try:
        yield chunks
    finally:
        aclose = getattr(chunks, "aclose", None)
        if aclose is not None:
            await aclose()


def _span(request: web.Request, size: int | None) -> tuple[int, int] | None:
    """The requested byte range ``[start, end)``, None for the whole blob; 416 if unsatisfiable."""
    if size is None:
        return None
    try:
        return parse_range(request.headers.get("Range"), size)
    except Unsatisfiable:
        raise RegistryError(
            416,
            "BLOB_UNKNOWN",
            "requested range not satisfiable",
            headers={"Content-Range": f"bytes */{size}"},
        ) from None


def _plain_tcp(request: web.Request) -> bool:
    """Zero-copy is for plain TCP only: under TLS the bytes must pass the TLS transport."""
    transport = request.transport
    return (
        transport is not None
        and transport.get_extra_info("sslcontext") is None
        and transport.get_extra_info("ssl_object") is None
        and transport.get_extra_info("socket") is not None
    )


async def _open_file(local: LocalFile) -> int:
    """A read descriptor of the cached file, opened by the store (on its own threads);
    never lost to a cancellation."""
    opening = asyncio.ensure_future(local.open())
    try:
        return await asyncio.shield(opening)
    except asyncio.CancelledError:
        opening.add_done_callback(_close_opened)
        raise


def _close_opened(opening: asyncio.Future[int]) -> None:
    if not opening.cancelled() and opening.exception() is None:
        os.close(opening.result())


async def _write(response: web.StreamResponse, chunk: bytes, stall: float) -> None:
    """One body write; a client that takes nothing for ``stall`` seconds (the
    ``http.write_timeout``) is dropped."""
    try:
        async with asyncio.timeout(stall):
            await response.write(chunk)
    except TimeoutError:
        raise ConnectionResetError(
            "client stalled: took nothing within the write timeout"
        ) from None


async def _send_file(
    request: web.Request, response: web.StreamResponse, fd: int, start: int, count: int
) -> web.StreamResponse:
    """A cache hit on plain TCP: ``count`` bytes from ``start``, zero-copy with sendfile.
    Closes ``fd``."""
    try:
        await response.prepare(request)
        await _sendfile(request, fd, start, count)
        request[BODY_BYTES] = count
        await response.write_eof()
    except ConnectionError as exc:
        log.debug("client went away during %s: %s", request.path, exc)
        _abort(request)
    finally:
        os.close(fd)
    return response


async def _sendfile(request: web.Request, fd: int, start: int, count: int) -> None:
    """``count`` bytes of ``fd`` from ``start`` straight to the client's socket."""
    transport = request.transport
    sock = transport.get_extra_info("socket") if transport is not None else None
    if transport is None or sock is None:
        raise ConnectionResetError("client went away")
    # What was written before (headers, chunks) leaves first: the transport's own buffer
    # must be empty before bytes bypass it.
    for _ in range(1000):
        if not transport.get_write_buffer_size():
            break
        await asyncio.sleep(0.005)
    await request.app[SENDFILE_KEY].send(sock.fileno(), fd, start, count)


async def _send_stream(
    request: web.Request,
    response: web.StreamResponse,
    chunks: AsyncIterator[bytes | FileSpan],
    what: str,
    count: int | None = None,
) -> web.StreamResponse:
    """Stream a body: a miss as its bytes arrive from upstream, or a cache hit through
    the TLS transport (``count`` bytes: a file shorter than that raises StorageError, and
    the connection is cut). A fill that fails, or a client lost or stalled on the way,
    aborts the connection: a response is never completed with bad or missing bytes."""
    await response.prepare(request)
    request[BODY_BYTES] = 0
    stall = request.app[WRITE_TIMEOUT_KEY]
    try:
        async for chunk in chunks:
            if isinstance(chunk, FileSpan):
                await _sendfile(request, chunk.fd, chunk.offset, chunk.size)
            else:
                await _write(response, chunk, stall)
            request[BODY_BYTES] += len(chunk)
        if count is not None and request[BODY_BYTES] != count:
            raise StorageError(f"cached file ended after {request[BODY_BYTES]} of {count} bytes")
        await response.write_eof()
    except FillFailed as exc:
        log.warning("aborting response for %s: %s", what, exc)
        _abort(request)
    except ConnectionError as exc:  # reset, broken pipe, stalled, lost while paused
        log.debug("client went away during %s: %s", what, exc)
        _abort(request)
    return response


def _abort(request: web.Request) -> None:
    if request.transport is not None:
        request.transport.abort()


async def _send_live(
    request: web.Request,
    response: web.StreamResponse,
    source: BlobSource,
    start: int,
    end: int | None,
) -> web.StreamResponse:
    """A miss: the bytes as they arrive from upstream (a fill, or a direct download).
    On plain TCP, a follower behind a fill gets the staged file's bytes by sendfile."""
    live = source.live
    assert live is not None
    chunks: AsyncIterator[bytes | FileSpan]
    if isinstance(live, BlobFill) and _plain_tcp(request):
        chunks = live.pieces(start, end)
    else:
        chunks = live.stream(start, end)
    async with _closing(chunks):
        return await _send_stream(request, response, chunks, str(source.digest))


async def _after(first: bytes, chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """``first`` (already read), then the rest of ``chunks``."""
    if first:
        yield first
    async for chunk in chunks:
        yield chunk
