"""Reading an upstream's answers: status codes as typed errors, headers, bounded bodies
(content codings undone), and a blob download as a :class:`~upstream.base.BlobStream`."""

from __future__ import annotations

import contextlib
import time
import zlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Final

import aiohttp

from registry_mirror.reference import parse_digest
from registry_mirror.upstream.base import ManifestInfo
from registry_mirror.upstream.errors import (
    UpstreamAuthFailed,
    UpstreamError,
    UpstreamNotFound,
    UpstreamProtocolError,
    UpstreamRateLimited,
    UpstreamUnavailable,
)
from registry_mirror.upstream.translate import translated

__all__ = [
    "BLOB_CHUNK",
    "RateLimit",
    "ResponseBlobStream",
    "content_range",
    "encoded",
    "manifest_info",
    "next_link",
    "parse_ratelimit",
    "ratelimit",
    "read_decoded",
    "retry_after",
    "status_error",
]

BLOB_CHUNK: Final = 256 * 1024


class ResponseBlobStream:
    """A :class:`~upstream.base.BlobStream` over an open aiohttp response. The body
    bytes received are told to ``on_close`` once, when it is closed."""

    def __init__(
        self,
        response: aiohttp.ClientResponse,
        size: int | None,
        offset: int,
        on_close: Callable[[int], None] | None = None,
    ) -> None:
        self._response = response
        self.size = size
        self.offset = offset
        self.received = 0
        self._on_close = on_close

    async def chunks(self) -> AsyncIterator[bytes]:
        with translated("blob download interrupted"):
            # As received (no joining of the buffered pieces: a copy of every byte).
            async for chunk, _ in self._response.content.iter_chunks():
                if chunk:
                    self.received += len(chunk)
                    yield chunk

    def close(self) -> None:
        self._response.close()
        on_close, self._on_close = self._on_close, None
        if on_close is not None:
            on_close(self.received)


@dataclass(frozen=True, slots=True)
class RateLimit:
    """What an upstream said of its rate limit (Docker Hub's ``ratelimit-limit`` and
    ``ratelimit-remaining``): requests allowed per window, how many are left, the window
    in seconds (None when not given)."""

    limit: int | None
    remaining: int
    window: int | None


def parse_ratelimit(value: str | None) -> tuple[int, int | None] | None:
    """``100;w=21600`` → (100, 21600); ``100`` → (100, None); the first policy of a list
    (``100, 5000;w=3600``); None for anything unreadable."""
    if not value or len(value) > 256:
        return None
    first = value.split(",", 1)[0]
    number, *params = (part.strip() for part in first.split(";"))
    if not (number.isascii() and number.isdigit()) or len(number) > 15:
        return None
    window = None
    for param in params:
        key, _, raw = param.partition("=")
        raw = raw.strip().strip('"')
        if key.strip().lower() == "w" and raw.isascii() and raw.isdigit() and len(raw) <= 15:
            window = int(raw)
            break
    return int(number), window


def ratelimit(response: aiohttp.ClientResponse) -> RateLimit | None:
    """The rate limit a response announces, if it announces one."""
    remaining = parse_ratelimit(response.headers.get("ratelimit-remaining"))
    if remaining is None:
        return None
    limit = parse_ratelimit(response.headers.get("ratelimit-limit"))
    window = remaining[1] if remaining[1] is not None else (limit[1] if limit else None)
    return RateLimit(limit[0] if limit else None, remaining[0], window)


def encoded(response: aiohttp.ClientResponse) -> bool:
    """Does the answer carry a content coding (its Content-Length is not the content's)?"""
    return response.headers.get("Content-Encoding", "identity").strip().lower() != "identity"


def manifest_info(response: aiohttp.ClientResponse) -> ManifestInfo:
    digest = None
    raw = response.headers.get("Docker-Content-Digest")
    if raw:
        with contextlib.suppress(ValueError):
            digest = parse_digest(raw.strip())
    media_type = response.headers.get("Content-Type", "").split(";")[0].strip()
    size = None if encoded(response) else response.content_length
    return ManifestInfo(digest, media_type, size)


def status_error(response: aiohttp.ClientResponse, what: str) -> UpstreamError:
    status = response.status
    if status == 404:
        return UpstreamNotFound(f"{what}: not found upstream")
    if status == 429:
        after = retry_after(response.headers.get("Retry-After"))
        return UpstreamRateLimited(f"{what}: upstream rate limit reached", after)
    if status in (401, 403):
        return UpstreamAuthFailed(f"{what}: upstream denied access ({status})")
    if status >= 500:
        return UpstreamUnavailable(f"{what}: upstream answered {status}")
    return UpstreamProtocolError(f"{what}: upstream answered {status}")


def retry_after(value: str | None) -> int | None:
    if value is None:
        return None
    value = value.strip()[:64]
    if value.isascii() and value.isdigit():
        return min(int(value), 86400)
    with contextlib.suppress(TypeError, ValueError, IndexError, OverflowError):
        return max(0, min(86400, int(parsedate_to_datetime(value).timestamp() - time.time())))
    return None


def content_range(value: str | None) -> tuple[int, int | None]:
    """``bytes 100-199/1000`` → (100, 1000)."""
    if value and value.startswith("bytes "):
        span, _, total = value[6:].partition("/")
        start, _, _ = span.partition("-")
        if start.isdigit():
            return int(start), int(total) if total.isdigit() else None
    raise UpstreamProtocolError(f"unreadable Content-Range {value!r}")


def next_link(value: str | None) -> str | None:
    """The target of ``Link: </v2/…?last=x&n=y>; rel="next"``."""
    if not value:
        return None
    for part in value.split(","):
        target, _, params = part.partition(";")
        if "next" in params:
            return target.strip().strip("<>")
    return None


async def _read_limited(response: aiohttp.ClientResponse, limit: int) -> bytes:
    chunks: list[bytes] = []
    total = 0
    with translated("upstream response interrupted"):
        async for chunk in response.content.iter_chunked(64 * 1024):
            total += len(chunk)
            if total > limit:
                raise UpstreamProtocolError(f"upstream response larger than {limit} bytes")
            chunks.append(chunk)
    return b"".join(chunks)


async def read_decoded(response: aiohttp.ClientResponse, limit: int) -> bytes:
    """The body with its content coding (``gzip``, ``deflate``) undone, at most ``limit``
    bytes decoded (a compressed bomb stops there)."""
    raw = await _read_limited(response, limit)
    codings = [c.strip().lower() for c in response.headers.get("Content-Encoding", "").split(",")]
    for coding in reversed([c for c in codings if c and c != "identity"]):
        raw = _decode(raw, coding, limit)
    return raw


def _decode(data: bytes, coding: str, limit: int) -> bytes:
    if coding in ("gzip", "x-gzip"):
        decoders = [zlib.MAX_WBITS | 16]
    elif coding == "deflate":  # zlib-wrapped as the RFC says, raw as some servers send
        decoders = [zlib.MAX_WBITS, -zlib.MAX_WBITS]
    else:
        raise UpstreamProtocolError(f"upstream answered with the unasked coding {coding[:40]!r}")
    for wbits in decoders:
        decoder = zlib.decompressobj(wbits)
        try:
            out = decoder.decompress(data, limit + 1)
        except zlib.error:
            continue
        if len(out) > limit:
            raise UpstreamProtocolError(f"upstream response larger than {limit} bytes decoded")
        if not decoder.eof:
            raise UpstreamProtocolError(f"upstream sent a truncated {coding} body")
        return out
    raise UpstreamProtocolError(f"upstream sent an undecodable {coding} body")
