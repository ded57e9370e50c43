"""Routes of the distribution API (read side); HTTP only, no disks, no upstream details."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from collections.abc import AsyncIterator
from typing import Final
from urllib.parse import quote

from aiohttp import web

from registry_mirror.api.access import ACCESS_KEY, CLIENT
from registry_mirror.api.access_log import BODY_BYTES
from registry_mirror.api.errors import KIND, RegistryError
from registry_mirror.api.ranges import Unsatisfiable, parse_range
from registry_mirror.api.sendfile import SendfileReactor
from registry_mirror.media_types import Accept
from registry_mirror.mirror import BlobSource, FillFailed, Manifest, Mirror, Route
from registry_mirror.mirror.direct import DirectBlob
from registry_mirror.reference import (
    Digest,
    parse_digest,
    parse_reference,
    parse_repo_name,
)
from registry_mirror.storage import LocalFile, Redirect, StorageError

__all__ = ["MIRROR_KEY", "SENDFILE_KEY", "WRITE_TIMEOUT_KEY", "setup_routes"]

log = logging.getLogger(__name__)

MIRROR_KEY: Final = web.AppKey("mirror", Mirror)
SENDFILE_KEY: Final = web.AppKey("sendfile", SendfileReactor)
# How long one body write may wait for a client that takes nothing (http.write_timeout).
WRITE_TIMEOUT_KEY: Final = web.AppKey("write_timeout", float)
DEFAULT_WRITE_TIMEOUT: Final = 300.0
MAX_PATH: Final = 1024
CATALOG_DEFAULT_PAGE: Final = 100
MAX_PAGE: Final = 10_000
READ_METHODS: Final = frozenset({"GET", "HEAD"})
STALE_WARNING: Final = '110 - "served from cache: upstream unavailable"'
TRUNCATED_WARNING: Final = '199 - "tag list truncated: upstream has more pages than are read"'


def setup_routes(api: web.Application) -> None:
    """The routes of the registry API, relative to where it is mounted (``/v2``)."""
    api.router.add_route("*", "", base)
    api.router.add_route("*", "/", base)
    api.router.add_route("*", "/_catalog", catalog)
    api.router.add_route("*", "/{path:.+}", dispatch)


def _read_only(request: web.Request) -> None:
    if request.method not in READ_METHODS:
        raise RegistryError(
            405,
            "UNSUPPORTED",
            "this registry is a read-only pull-through mirror: push and delete are refused",
            headers={"Allow": "GET, HEAD"},
        )


async def base(request: web.Request) -> web.StreamResponse:
    _read_only(request)
    return web.json_response({})


async def dispatch(request: web.Request) -> web.StreamResponse:
    path = request.match_info["path"]
    if len(path) > MAX_PATH:
        raise RegistryError(400, "NAME_INVALID", "request path too long")
    name, sep, ref = path.rpartition("/manifests/")
    if sep:
        request[KIND] = "manifest"
        _read_only(request)
        return await manifest(request, name, ref)
    if "/blobs/uploads" in path or path.endswith("/blobs/uploads"):
        request[KIND] = "blob"
        _read_only(request)  # every upload starts with a POST or PUT
        raise RegistryError(405, "UNSUPPORTED", "uploads are not supported")
    name, sep, ref = path.rpartition("/blobs/")
    if sep:
        request[KIND] = "blob"
        _read_only(request)
        return await blob(request, name, ref)
    if path.endswith("/tags/list"):
        request[KIND] = "tags"
        _read_only(request)
        return await tags(request, path.removesuffix("/tags/list"))
    raise RegistryError(404, "NOT_FOUND", "no such endpoint")


def _mirror(request: web.Request) -> Mirror:
    return request.app[MIRROR_KEY]


def _repo(request: web.Request, name: str) -> Route:
    """The route for a repository name, if this client may read it."""
    repo_name = parse_repo_name(name)
    route = _mirror(request).route(repo_name, request.query.get("ns"))
    request.app[ACCESS_KEY].authorize(request, route.key)
    return route


# --- manifests -------------------------------------------------------------------


async def manifest(request: web.Request, name: str, ref: str) -> web.StreamResponse:
    mirror = _mirror(request)
    reference = parse_reference(ref)
    route = _repo(request, name)
    accept = Accept.parse(request.headers.getall("Accept", []))
    head = request.method == "HEAD"
    found = await mirror.manifest(route, reference, accept, need_body=not head)
    headers = _manifest_headers(found)
    if _etag_matches(request, found.digest):
        return web.Response(status=304, headers=headers)
    if head:
        return await _head(request, headers, found.size)
    assert found.body is not None
    return web.Response(body=found.body, headers=headers)


async def _head(
    request: web.Request, headers: dict[str, str], size: int | None
) -> web.StreamResponse:
    """A HEAD answer announcing the length of the body a GET would have."""
    response = web.StreamResponse(headers=headers)
    if size is not None:
        response.content_length = size
    await response.prepare(request)
    await response.write_eof()
    return response


def _manifest_headers(found: Manifest) -> dict[str, str]:
    headers = {
        "Content-Type": found.media_type,
        "Docker-Content-Digest": str(found.digest),
        "ETag": f'"{found.digest}"',
    }
    if found.stale:
        headers["Warning"] = STALE_WARNING
    return headers


def _etag_matches(request: web.Request, digest: Digest) -> bool:
    value = request.headers.get("If-None-Match")
    if not value:
        return False
    return any(tag.strip().strip('"') in (str(digest), "*") for tag in value.split(","))


# --- blobs -----------------------------------------------------------------------


def _blob_headers(digest: Digest) -> dict[str, str]:
    return {
        "Content-Type": "application/octet-stream",
        "Docker-Content-Digest": str(digest),
        "ETag": f'"{digest}"',
        "Accept-Ranges": "bytes",
        "Cache-Control": "max-age=31536000",
    }


async def blob(request: web.Request, name: str, ref: str) -> web.StreamResponse:
    mirror = _mirror(request)
    digest = parse_digest(ref)
    route = _repo(request, name)
    headers = _blob_headers(digest)
    if request.method == "HEAD":
        return await _head(request, headers, await mirror.blob_size(route, digest))
    if _etag_matches(request, digest):
        return web.Response(status=304, headers=headers)
    with request.app[ACCESS_KEY].limiter.download(request[CLIENT]):
        return await _blob_get(request, mirror, route, digest, headers)


async def _blob_get(
    request: web.Request, mirror: Mirror, route: Route, digest: Digest, headers: dict[str, str]
) -> web.StreamResponse:
    """A file evicted between the lookup and the open is asked for again (then through a
    fill). Every descriptor, reader and upstream connection is released on every exit."""
    for _ in range(2):
        source = await mirror.blob(route, digest)
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
    span = _span(request, source.size)
    response = web.StreamResponse(status=200 if span is None else 206, headers=headers)
    if span is not None:
        response.headers["Content-Range"] = f"bytes {span[0]}-{span[1] - 1}/{source.size}"
        response.content_length = span[1] - span[0]
    elif source.size is not None:
        response.content_length = source.size
    start, end = span if span is not None else (0, source.size)
    delivery = source.delivery
    if isinstance(delivery, Redirect):
        # The store serves it (object storage): the client follows, with its Range.
        moved = {"Location": delivery.url, "Docker-Content-Digest": str(digest)}
        return web.Response(status=307, headers=moved)
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
async def _closing(chunks: AsyncIterator[bytes]) -> AsyncIterator[AsyncIterator[bytes]]:
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


async def _write(request: web.Request, response: web.StreamResponse, chunk: bytes) -> None:
    """One body write; a client that takes nothing for ``http.write_timeout`` is dropped."""
    try:
        async with asyncio.timeout(request.app.get(WRITE_TIMEOUT_KEY, DEFAULT_WRITE_TIMEOUT)):
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
        transport = request.transport
        sock = transport.get_extra_info("socket") if transport is not None else None
        if transport is None or sock is None:
            raise ConnectionResetError("client went away")
        # Headers first: the transport's own buffer must be empty before bytes bypass it.
        for _ in range(1000):
            if not transport.get_write_buffer_size():
                break
            await asyncio.sleep(0.005)
        await request.app[SENDFILE_KEY].send(sock.fileno(), fd, start, count)
        request[BODY_BYTES] = count
        await response.write_eof()
    except ConnectionError as exc:
        log.debug("client went away during %s: %s", request.path, exc)
        _abort(request)
    finally:
        os.close(fd)
    return response


async def _send_stream(
    request: web.Request,
    response: web.StreamResponse,
    chunks: AsyncIterator[bytes],
    what: str,
    count: int | None = None,
) -> web.StreamResponse:
    """Stream a body: a miss as its bytes arrive from upstream, or a cache hit through
    the TLS transport (``count`` bytes: a file shorter than that raises StorageError, and
    the connection is cut). A fill that fails, or a client lost or stalled on the way,
    aborts the connection: a response is never completed with bad or missing bytes."""
    await response.prepare(request)
    request[BODY_BYTES] = 0
    try:
        async for chunk in chunks:
            await _write(request, response, chunk)
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
    """A miss: the bytes as they arrive from upstream (a fill, or a direct download)."""
    assert source.live is not None
    chunks = source.live.stream(start, end)
    async with _closing(chunks):
        return await _send_stream(request, response, chunks, str(source.digest))


async def _after(first: bytes, chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """``first`` (already read), then the rest of ``chunks``."""
    if first:
        yield first
    async for chunk in chunks:
        yield chunk


# --- listings --------------------------------------------------------------------


def _page_args(request: web.Request, default: int | None) -> tuple[int | None, str | None]:
    raw_n = request.query.get("n")
    n: int | None = default
    if raw_n is not None and raw_n != "":
        if not (raw_n.isascii() and raw_n.isdigit()) or len(raw_n) > 9:
            raise RegistryError(400, "PAGINATION_NUMBER_INVALID", "invalid number of results")
        n = min(int(raw_n), MAX_PAGE)
    last = request.query.get("last")
    return n, (last or None)


def _paginate(
    items: list[str], request: web.Request, default: int | None
) -> tuple[list[str], str | None]:
    n, last = _page_args(request, default)
    items = sorted(items)
    if last is not None:
        items = [item for item in items if item > last]
    if n is None or len(items) <= n:
        return items, None
    page = items[:n]
    if not page:
        return page, None
    query = f"last={quote(page[-1], safe='')}&n={n}"
    namespace = request.query.get("ns")
    if namespace:  # containerd's ?ns= names the registry: the next page needs it too
        query += f"&ns={quote(namespace, safe='')}"
    return page, f'<{request.path}?{query}>; rel="next"'


async def tags(request: web.Request, name: str) -> web.StreamResponse:
    mirror = _mirror(request)
    route = _repo(request, name)
    # A bad page size is refused before upstream is asked; a following page (``last``)
    # may come from the list read for the first one a moment ago.
    _, last = _page_args(request, None)
    listing = await mirror.tags(route, fresh=last is None)
    page, link = _paginate(listing.tags, request, None)
    response = web.Response(
        text=json.dumps({"name": name, "tags": page}), content_type="application/json"
    )
    if link:
        response.headers["Link"] = link
    if listing.stale:
        response.headers.add("Warning", STALE_WARNING)
    if listing.truncated:
        response.headers.add("Warning", TRUNCATED_WARNING)
    return response


async def catalog(request: web.Request) -> web.StreamResponse:
    _read_only(request)
    mirror = _mirror(request)
    policy = request.app[ACCESS_KEY]
    names = [name for name, key in await mirror.catalog_keys() if policy.may_read(request, key)]
    page, link = _paginate(names, request, CATALOG_DEFAULT_PAGE)
    response = web.Response(
        text=json.dumps({"repositories": page}), content_type="application/json"
    )
    if link:
        response.headers["Link"] = link
    return response
