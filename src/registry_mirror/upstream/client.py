"""The client of one upstream registry (:class:`RegistryClient`, an
:class:`~upstream.base.Upstream`): manifests, blobs, tags; the bounds on metadata requests
(total time, circuit breaker, remembered refusals); auth and redirects inside.

Every failure leaves as one of the typed errors of :mod:`upstream.errors`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Final, TypeVar

import aiohttp
from yarl import URL

from registry_mirror.config import OutboundProxy
from registry_mirror.media_types import MANIFEST_ACCEPT
from registry_mirror.metrics import UpstreamMetrics
from registry_mirror.reference import Digest
from registry_mirror.upstream.auth import JSON_ENCODINGS, Authenticator, parse_challenge
from registry_mirror.upstream.base import BlobStream, ManifestInfo, TagList
from registry_mirror.upstream.errors import (
    UpstreamAuthFailed,
    UpstreamError,
    UpstreamNotFound,
    UpstreamProtocolError,
)
from registry_mirror.upstream.responses import (
    RateLimit,
    ResponseBlobStream,
    content_range,
    encoded,
    manifest_info,
    next_link,
    ratelimit,
    read_decoded,
    status_error,
)
from registry_mirror.upstream.sender import Sender
from registry_mirror.upstream.translate import deadline
from registry_mirror.upstream.transport import Breaker, Sessions

__all__ = ["MAX_TAG_PAGES", "RegistryClient"]

log = logging.getLogger(__name__)

MAX_MANIFEST_SIZE: Final = 4 * 1024 * 1024  # registry:2's limit
MAX_TAG_PAGES: Final = 100
MAX_TAG_LIST: Final = 16 * 1024 * 1024
#: How long a 404 or an auth refusal for the same repository and reference is answered
#: without asking upstream again.
NEGATIVE_TTL: Final = 5.0
NEGATIVE_ENTRIES: Final = 10_000

T = TypeVar("T")


class RegistryClient:
    """One upstream registry over HTTP, e.g. ``https://registry-1.docker.io``."""

    def __init__(
        self,
        url: str,
        sessions: Sessions | aiohttp.ClientSession,
        *,
        name: str = "default",
        username: str | None = None,
        password: str | None = None,
        connect_timeout: float = 10.0,
        read_timeout: float = 60.0,
        metadata_timeout: float = 5.0,
        allow_private_redirects: bool = False,
        proxy: OutboundProxy | None = None,
        metrics: UpstreamMetrics | None = None,
    ) -> None:
        self.origin = URL(url.rstrip("/"))
        self.name = name
        if isinstance(sessions, aiohttp.ClientSession):
            sessions = Sessions.single(sessions)
        self.metrics = metrics
        self._sender = Sender(
            self.origin,
            sessions,
            name=name,
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            allow_private_redirects=allow_private_redirects,
            proxy=proxy or OutboundProxy(),
            metrics=metrics,
        )
        self._auth = Authenticator(self._sender, username, password)
        self.metadata_timeout = metadata_timeout
        self.breaker = Breaker(name)
        self._negative: dict[tuple[str, str, str], tuple[float, UpstreamError]] = {}
        # The rate limit upstream announced last (Docker Hub's ratelimit-* headers).
        self.ratelimit: RateLimit | None = None

    def __repr__(self) -> str:
        return f"<RegistryClient {self.name} {self.origin}>"

    @property
    def url(self) -> str:
        return str(self.origin)

    def proxy_description(self) -> str | None:
        """The forward proxy of the upstream's own URL, fit for a log (no credentials)."""
        return self._sender.proxy_description()

    # --- the distribution API -------------------------------------------------

    async def head_manifest(self, repo: str, reference: str) -> ManifestInfo:
        async def call() -> ManifestInfo:
            response = await self._request(
                "HEAD", repo, f"manifests/{reference}", {"Accept": MANIFEST_ACCEPT}
            )
            response.release()
            return manifest_info(response)

        return await self._metadata(("manifest", repo, reference), call)

    async def get_manifest(self, repo: str, reference: str) -> tuple[ManifestInfo, bytes]:
        """The manifest's bytes exactly as upstream stores them (a content coding a
        proxy added is decoded; the caller verifies the digest on what is returned)."""

        async def call() -> tuple[ManifestInfo, bytes]:
            response = await self._request(
                "GET", repo, f"manifests/{reference}", {"Accept": MANIFEST_ACCEPT}
            )
            try:
                length = response.content_length
                if length is not None and length > MAX_MANIFEST_SIZE:
                    raise UpstreamProtocolError(
                        f"manifest {repo}:{reference} is larger than {MAX_MANIFEST_SIZE} bytes"
                    )
                body = await read_decoded(response, MAX_MANIFEST_SIZE)
            finally:
                response.release()
            if self.metrics is not None:
                self.metrics.received["manifest"].inc(len(body))
            info = manifest_info(response)
            return ManifestInfo(info.digest, info.media_type, len(body)), body

        return await self._metadata(("manifest", repo, reference), call)

    async def head_blob(self, repo: str, digest: Digest) -> int | None:
        async def call() -> int | None:
            response = await self._request("HEAD", repo, f"blobs/{digest}", {})
            response.release()
            return None if encoded(response) else response.content_length

        return await self._metadata(("blob", repo, str(digest)), call)

    async def get_blob(
        self, repo: str, digest: Digest, offset: int = 0, end: int | None = None
    ) -> BlobStream:
        """Open a blob download of ``[offset, end)`` (following redirects to a CDN)."""
        last = "" if end is None else str(end - 1)
        headers = {"Range": f"bytes={offset}-{last}"} if offset or end is not None else {}
        with self._remembering_refusals(("blob", repo, str(digest))):
            response = await self._request("GET", repo, f"blobs/{digest}", headers, blob=True)
        # Layer bytes are never decoded: identity was asked, and a coding announced anyway
        # is either a proxy's (the digest check refuses the result) or a mislabelled
        # gzip layer (the bytes are the layer).
        counted = None if self.metrics is None else self.metrics.received["blob"].inc
        if response.status == 206:
            start, total = content_range(response.headers.get("Content-Range"))
            if start != offset:
                response.close()
                raise UpstreamProtocolError(f"asked for bytes from {offset}, got from {start}")
            return ResponseBlobStream(response, total, start, counted)
        return ResponseBlobStream(response, response.content_length, 0, counted)

    async def list_tags(self, repo: str) -> TagList:
        return await self._metadata(("tags", repo, ""), lambda: self._list_tags(repo))

    async def _list_tags(self, repo: str) -> TagList:
        tags = TagList()
        path = "tags/list"
        seen: set[str] = set()
        for _ in range(MAX_TAG_PAGES):
            response = await self._request(
                "GET",
                repo,
                path,
                {"Accept": "application/json", "Accept-Encoding": JSON_ENCODINGS},
            )
            try:
                raw = await read_decoded(response, MAX_TAG_LIST)
                if self.metrics is not None:
                    self.metrics.received["tags"].inc(len(raw))
                body = json.loads(raw.decode())
            except (ValueError, UnicodeDecodeError, RecursionError) as exc:
                raise UpstreamProtocolError(f"unreadable tag list for {repo}") from exc
            finally:
                response.release()
            page = body.get("tags") if isinstance(body, dict) else None
            if page is not None and not (
                isinstance(page, list) and all(isinstance(t, str) for t in page)
            ):
                raise UpstreamProtocolError(f"malformed tag list for {repo}")
            tags.extend(page or [])
            next_url = next_link(response.headers.get("Link"))
            if next_url is None:
                return tags
            try:
                query = URL(next_url).query_string
            except ValueError:
                raise UpstreamProtocolError(f"unreadable tag list link for {repo}") from None
            if query in seen:  # a link back to a page already read: stop there
                return tags
            seen.add(query)
            path = "tags/list?" + query
        tags.truncated = True  # more pages than MAX_TAG_PAGES: said so, not silently cut
        return tags

    # --- bounds: total time, circuit breaker, negative answers ----------------

    async def _metadata(self, key: tuple[str, str, str], call: Callable[[], Awaitable[T]]) -> T:
        """One metadata request: a remembered 404/refusal answers at once; otherwise it
        goes out (unless the breaker is open) and may take ``metadata_timeout`` in all."""
        with self._remembering_refusals(key), self.breaker.guard():
            async with deadline(self.metadata_timeout, self.name):
                return await call()

    @contextlib.contextmanager
    def _remembering_refusals(self, key: tuple[str, str, str]) -> Iterator[None]:
        """A 404 or a refusal for ``key`` is answered from memory for ``NEGATIVE_TTL``;
        one raised inside is remembered."""
        self._negative_check(key)
        try:
            yield
        except (UpstreamNotFound, UpstreamAuthFailed) as exc:
            self._negative_put(key, exc)
            raise

    def _negative_check(self, key: tuple[str, str, str]) -> None:
        remembered = self._negative.get(key)
        if remembered is None:
            return
        expires, exc = remembered
        if time.monotonic() >= expires:
            del self._negative[key]
            return
        raise type(exc)(exc.message)

    def _negative_put(self, key: tuple[str, str, str], exc: UpstreamError) -> None:
        now = time.monotonic()
        if len(self._negative) >= NEGATIVE_ENTRIES:
            self._negative = {k: v for k, v in self._negative.items() if v[0] > now}
            if len(self._negative) >= NEGATIVE_ENTRIES:
                self._negative.clear()
        self._negative[key] = (now + NEGATIVE_TTL, exc)

    # --- auth around each request ---------------------------------------------

    async def _request(
        self, method: str, repo: str, path: str, headers: dict[str, str], *, blob: bool = False
    ) -> aiohttp.ClientResponse:
        """Send with auth; on 401 authenticate once and retry; follow redirects.

        Returns a 2xx response (the caller releases it) or raises a typed error.
        """
        scope = f"repository:{repo}:pull"
        url = URL(str(self.origin) + f"/v2/{repo}/{path}", encoded=True)
        renewed = False
        basic = self._auth.basic
        auth = self._auth.header(scope)
        while True:
            response = await self._sender.send(method, url, headers, auth, blob=blob)
            if response.status != 401:
                break
            challenge = parse_challenge(response.headers.get("WWW-Authenticate"))
            response.release()
            # An anonymous attempt learns the challenge; a token refused is renewed once;
            # refused Basic credentials, or a renewed token refused again, are final. The
            # credentials just obtained are sent as they are (whatever lifetime was
            # announced), so this loop ends after two authentications at most.
            if renewed or (auth is not None and auth == basic):
                raise UpstreamAuthFailed(
                    f"{self.name} refused the credentials for {repo}"
                    if basic
                    else f"{self.name} requires authentication for {repo}"
                )
            renewed = auth is not None
            auth = await self._auth.authenticate(challenge, scope, repo)
        self._note_ratelimit(response)
        if 200 <= response.status < 300:
            return response
        response.release()
        raise status_error(response, f"{method} {repo}/{path}")

    def _note_ratelimit(self, response: aiohttp.ClientResponse) -> None:
        """Remember the rate limit announced (for the metrics), log it when it changes;
        count a 429."""
        if response.status == 429 and self.metrics is not None:
            self.metrics.rate_limited.inc()
        if "ratelimit-remaining" not in response.headers:
            return
        announced = ratelimit(response)
        if announced is None or announced == self.ratelimit:
            return
        self.ratelimit = announced
        log.info(
            "%s rate limit: remaining %d of %s per %s",
            self.name,
            announced.remaining,
            "?" if announced.limit is None else announced.limit,
            "?" if announced.window is None else f"{announced.window}s",
        )
