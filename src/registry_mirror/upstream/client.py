"""A client for one upstream registry: manifests, blobs, tags; auth and redirects inside.

Every failure leaves as one of the typed errors of :mod:`upstream.errors`.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ipaddress
import json
import logging
import math
import socket
import time
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any, Final, TypeVar

import aiohttp
from yarl import URL

from registry_mirror.config import OutboundProxy, redact_url
from registry_mirror.media_types import MANIFEST_ACCEPT
from registry_mirror.reference import Digest, parse_digest
from registry_mirror.upstream.auth import Challenge, TokenCache, parse_challenge
from registry_mirror.upstream.errors import (
    UpstreamAuthFailed,
    UpstreamError,
    UpstreamNotFound,
    UpstreamProtocolError,
    UpstreamRateLimited,
    UpstreamUnavailable,
)
from registry_mirror.upstream.transport import (
    Breaker,
    PrivateAddressRefused,
    Sessions,
    is_public,
)

__all__ = ["MAX_TAG_PAGES", "BlobStream", "ManifestInfo", "TagList", "Upstream"]

log = logging.getLogger(__name__)

MAX_REDIRECTS: Final = 5
MAX_MANIFEST_SIZE: Final = 4 * 1024 * 1024  # registry:2's limit
MAX_TAG_PAGES: Final = 100
MAX_TOKEN_RESPONSE: Final = 1024 * 1024
MAX_TAG_LIST: Final = 16 * 1024 * 1024
BLOB_CHUNK: Final = 256 * 1024
#: How long a 404 or an auth refusal for the same repository and reference is answered
#: without asking upstream again.
NEGATIVE_TTL: Final = 5.0
NEGATIVE_ENTRIES: Final = 10_000
#: Content codings decoded on metadata answers (tokens, tag lists; manifests when a
#: proxy compresses them although identity was asked).
JSON_ENCODINGS: Final = "gzip, deflate"

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class ManifestInfo:
    """What a manifest HEAD (or GET) told: digest, media type, size."""

    digest: Digest | None
    media_type: str
    size: int | None


class BlobStream:
    """An open upstream blob download. ``size`` is the full blob size if known;
    ``offset`` is where the body starts (non-zero when a Range was honoured)."""

    def __init__(self, response: aiohttp.ClientResponse, size: int | None, offset: int) -> None:
        self._response = response
        self.size = size
        self.offset = offset

    async def chunks(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._response.content.iter_chunked(BLOB_CHUNK):
                yield chunk
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise UpstreamUnavailable(f"blob download interrupted: {_describe(exc)}") from exc

    def close(self) -> None:
        self._response.close()


class TagList(list[str]):
    """Tags read from upstream; ``truncated`` when more pages followed than are read."""

    truncated: bool = False


class Upstream:
    """One upstream registry, e.g. ``https://registry-1.docker.io``."""

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
    ) -> None:
        self.allow_private_redirects = allow_private_redirects
        self.url = URL(url.rstrip("/"))
        self.name = name
        if isinstance(sessions, aiohttp.ClientSession):
            sessions = Sessions.single(sessions)
        self._sessions = sessions
        self._proxy = proxy or OutboundProxy()
        self.metadata_timeout = metadata_timeout
        self.breaker = Breaker(name)
        self._negative: dict[tuple[str, str, str], tuple[float, UpstreamError]] = {}
        self._basic = (
            "Basic " + base64.b64encode(f"{username}:{password or ''}".encode()).decode()
            if username is not None
            else None
        )
        self._tokens = TokenCache()
        self._uses_basic = False
        # No ``connect``: it would count the wait for a free pooled connection too, and a
        # download queued behind others is not a connect failure.
        self._timeout = aiohttp.ClientTimeout(
            total=None, connect=None, sock_connect=connect_timeout, sock_read=read_timeout
        )
        self.ratelimit_remaining: str | None = None
        self.ratelimit_limit: str | None = None

    def __repr__(self) -> str:
        return f"<Upstream {self.name} {self.url}>"

    def proxy_description(self) -> str | None:
        """The forward proxy of the upstream's own URL, fit for a log (no credentials)."""
        chosen = self._proxy.for_url(self.url.scheme, self.url.host or "", self.url.port)
        return None if chosen is None else redact_url(chosen, mark=True)

    # --- the distribution API -------------------------------------------------

    async def head_manifest(self, repo: str, reference: str) -> ManifestInfo:
        async def call() -> ManifestInfo:
            response = await self._request(
                "HEAD", repo, f"manifests/{reference}", {"Accept": MANIFEST_ACCEPT}
            )
            response.release()
            return _manifest_info(response)

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
                body = await _read_decoded(response, MAX_MANIFEST_SIZE)
            finally:
                response.release()
            info = _manifest_info(response)
            return ManifestInfo(info.digest, info.media_type, len(body)), body

        return await self._metadata(("manifest", repo, reference), call)

    async def head_blob(self, repo: str, digest: Digest) -> int | None:
        async def call() -> int | None:
            response = await self._request("HEAD", repo, f"blobs/{digest}", {})
            response.release()
            return None if _encoded(response) else response.content_length

        return await self._metadata(("blob", repo, str(digest)), call)

    async def get_blob(self, repo: str, digest: Digest, offset: int = 0) -> BlobStream:
        """Open a blob download from ``offset`` (following redirects to a CDN)."""
        headers = {"Range": f"bytes={offset}-"} if offset else {}
        with self._remembering_refusals(("blob", repo, str(digest))):
            response = await self._request("GET", repo, f"blobs/{digest}", headers, blob=True)
        # Layer bytes are never decoded: identity was asked, and a coding announced anyway
        # is either a proxy's (the digest check refuses the result) or a mislabelled
        # gzip layer (the bytes are the layer).
        if response.status == 206:
            start, total = _content_range(response.headers.get("Content-Range"))
            if start != offset:
                response.close()
                raise UpstreamProtocolError(f"asked for bytes from {offset}, got from {start}")
            return BlobStream(response, total, start)
        return BlobStream(response, response.content_length, 0)

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
                body = json.loads((await _read_decoded(response, MAX_TAG_LIST)).decode())
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
            next_url = _next_link(response.headers.get("Link"))
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
            try:
                async with asyncio.timeout(self.metadata_timeout):
                    return await call()
            except TimeoutError:
                raise UpstreamUnavailable(
                    f"{self.name} did not answer within {self.metadata_timeout:g}s"
                ) from None

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

    # --- transport, auth, redirects -------------------------------------------

    def _url(self, repo: str, path: str) -> URL:
        base = str(self.url) + f"/v2/{repo}/{path}"
        return URL(base, encoded=True)

    def _scope(self, repo: str) -> str:
        return f"repository:{repo}:pull"

    async def _request(
        self, method: str, repo: str, path: str, headers: dict[str, str], *, blob: bool = False
    ) -> aiohttp.ClientResponse:
        """Send with auth; on 401 authenticate once and retry; follow redirects.

        Returns a 2xx response (the caller releases it) or raises a typed error.
        """
        scope = self._scope(repo)
        url = self._url(repo, path)
        renewed = False
        auth = self._auth_header(scope)
        while True:
            response = await self._send_following(method, url, headers, auth, blob=blob)
            if response.status != 401:
                break
            challenge = parse_challenge(response.headers.get("WWW-Authenticate"))
            response.release()
            # An anonymous attempt learns the challenge; a token refused is renewed once;
            # refused Basic credentials, or a renewed token refused again, are final. The
            # credentials just obtained are sent as they are (whatever lifetime was
            # announced), so this loop ends after two authentications at most.
            if renewed or (auth is not None and auth == self._basic):
                raise UpstreamAuthFailed(
                    f"{self.name} refused the credentials for {repo}"
                    if self._basic
                    else f"{self.name} requires authentication for {repo}"
                )
            renewed = auth is not None
            auth = await self._authenticate(challenge, scope, repo)
        self._note_ratelimit(response)
        if 200 <= response.status < 300:
            return response
        response.release()
        raise _status_error(response, f"{method} {repo}/{path}")

    def _auth_header(self, scope: str) -> str | None:
        token = self._tokens.get(scope)
        if token is not None:
            return f"Bearer {token}"
        if self._uses_basic:
            return self._basic
        return None

    async def _authenticate(self, challenge: Challenge | None, scope: str, repo: str) -> str:
        """Answer a challenge: the ``Authorization`` value to send next."""
        if challenge is None:
            raise UpstreamAuthFailed(f"{self.name} answered 401 without a usable challenge")
        if challenge.scheme == "basic":
            if self._basic is None:
                raise UpstreamAuthFailed(f"{self.name} requires credentials for {repo}")
            self._uses_basic = True
            return self._basic
        if challenge.scheme != "bearer" or not challenge.params.get("realm"):
            raise UpstreamAuthFailed(f"{self.name} asked for unsupported auth {challenge.scheme}")
        self._tokens.drop(scope)
        return f"Bearer {await self._fetch_token(challenge, scope)}"

    async def _fetch_token(self, challenge: Challenge, scope: str) -> str:
        try:
            realm = URL(challenge.params["realm"])
        except ValueError:
            raise UpstreamAuthFailed(f"{self.name} named an unreadable token realm") from None
        if realm.scheme not in ("http", "https") or not realm.host:
            raise UpstreamAuthFailed(f"{self.name} named a token realm that is not HTTP(S)")
        # The realm gets the upstream's credentials (as registry:2 sends them to
        # auth.docker.io), so it is held to the policy of redirects: on a host other than
        # the upstream's own, no loopback/private/link-local address unless allowed, and
        # never plain HTTP when the upstream is HTTPS.
        own_host = (realm.host or "").lower() == (self.url.host or "").lower()
        if self._basic and self.url.scheme == "https" and realm.scheme != "https":
            raise UpstreamAuthFailed(
                f"{self.name} named a plain-HTTP token realm ({realm.host}); credentials"
                " are sent over HTTPS only"
            )
        guarded = not own_host and not self.allow_private_redirects
        if guarded:
            await self._refuse_private(realm, "token realm")
        query: dict[str, str] = {"scope": scope}
        if "service" in challenge.params:
            query["service"] = challenge.params["service"]
        headers = {"Accept-Encoding": JSON_ENCODINGS}
        if self._basic:
            headers["Authorization"] = self._basic
        token_url = realm.update_query(query)
        session = self._sessions.guarded_metadata if guarded else self._sessions.metadata
        try:
            async with session.get(
                token_url,
                headers=headers,
                timeout=self._timeout,
                allow_redirects=False,
                **self._proxy_args(token_url),
            ) as response:
                if response.status in (401, 403):
                    raise UpstreamAuthFailed(
                        f"{self.name}'s token service refused the credentials"
                        if self._basic
                        else f"{self.name}'s token service refused anonymous access"
                    )
                if response.status == 429:
                    raise _status_error(response, "token request")
                if response.status != 200:
                    raise UpstreamUnavailable(
                        f"{self.name}'s token service answered {response.status}"
                    )
                raw = await _read_decoded(response, MAX_TOKEN_RESPONSE)
        except aiohttp.ClientConnectorError as exc:
            raise _connect_failed(
                exc, "token realm at", f"{self.name}'s token service unreachable"
            ) from exc
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise UpstreamUnavailable(
                f"{self.name}'s token service unreachable: {_describe(exc)}"
            ) from exc
        try:
            body = json.loads(raw.decode())
            token = body.get("token") or body.get("access_token")
            expires_in = float(body.get("expires_in") or 60)
        except (ValueError, AttributeError, TypeError, UnicodeDecodeError, RecursionError) as exc:
            raise UpstreamAuthFailed(
                f"{self.name}'s token service sent an unreadable token"
            ) from exc
        if not isinstance(token, str) or not token or len(token) > 64 * 1024:
            raise UpstreamAuthFailed(f"{self.name}'s token service sent no token")
        if not all(33 <= ord(c) < 127 for c in token):
            raise UpstreamAuthFailed(f"{self.name}'s token service sent a malformed token")
        if not math.isfinite(expires_in) or expires_in <= 0:
            expires_in = 60.0  # the distribution spec's default
        self._tokens.put(scope, token, min(expires_in, 86400.0))
        return token

    async def _send_following(
        self, method: str, url: URL, headers: dict[str, str], auth: str | None, *, blob: bool
    ) -> aiohttp.ClientResponse:
        """One request, following redirects; ``Authorization`` goes only to the upstream
        origin. Other hosts are reached through the guarded pools (public addresses only)
        unless this upstream allows private ones."""
        for _ in range(MAX_REDIRECTS + 1):
            send = dict(headers)
            origin = _same_origin(url, self.url)
            if auth is not None and origin:
                send["Authorization"] = auth
            guarded = not origin and not self.allow_private_redirects
            if blob:
                session = self._sessions.guarded_blobs if guarded else self._sessions.blobs
            else:
                session = self._sessions.guarded_metadata if guarded else self._sessions.metadata
            response = await self._send_once(session, method, url, send)
            if response.status not in (301, 302, 303, 307, 308):
                return response
            location = response.headers.get("Location")
            response.release()
            if not location:
                raise UpstreamProtocolError(f"redirect without a Location from {url.host}")
            try:
                target = url.join(URL(location))
            except ValueError:
                raise UpstreamProtocolError("unreadable redirect Location") from None
            if target.scheme not in ("http", "https") or not target.host:
                raise UpstreamProtocolError(f"refused redirect to a {target.scheme!r} URL")
            if not self.allow_private_redirects and not _same_origin(target, self.url):
                await self._refuse_private(target, "redirect")
            url = target
        raise UpstreamProtocolError(f"more than {MAX_REDIRECTS} redirects from {self.name}")

    async def _send_once(
        self, session: aiohttp.ClientSession, method: str, url: URL, headers: dict[str, str]
    ) -> aiohttp.ClientResponse:
        """Send; a connection failure before any answer is retried once (idempotent reads)."""
        for attempt in (1, 2):
            try:
                return await session.request(
                    method,
                    url,
                    headers=headers,
                    allow_redirects=False,
                    timeout=self._timeout,
                    **self._proxy_args(url),
                )
            except aiohttp.ClientConnectorError as exc:
                raise _connect_failed(
                    exc, "redirect to", f"{self.name} unreachable ({url.host})"
                ) from exc
            except (aiohttp.ClientConnectionError, TimeoutError) as exc:
                if attempt == 2:
                    raise UpstreamUnavailable(
                        f"{self.name} unreachable ({url.host}): {_describe(exc)}"
                    ) from exc
                log.info("retrying %s %s after %s", method, url.path, _describe(exc))
                await asyncio.sleep(0.2)
            except aiohttp.ClientError as exc:
                raise UpstreamProtocolError(f"{self.name}: {_describe(exc)}") from exc
        raise AssertionError("unreachable")

    def _proxy_args(self, url: URL) -> dict[str, Any]:
        """``proxy``/``proxy_auth`` for aiohttp: the forward proxy this URL goes through
        (credentials in the proxy URL become ``Proxy-Authorization``)."""
        chosen = self._proxy.for_url(url.scheme, url.host or "", url.port)
        if chosen is None:
            return {}
        proxy = URL(chosen)
        if proxy.user is None:
            return {"proxy": proxy}
        auth = aiohttp.BasicAuth(proxy.user, proxy.password or "")
        return {"proxy": proxy.with_user(None), "proxy_auth": auth}

    async def _refuse_private(self, target: URL, what: str) -> None:
        """A redirect or a token realm must not turn the mirror into a way to reach
        internal addresses: loopback, private, link-local (cloud metadata) and such are
        refused unless this upstream's config allows them.

        An address literal is checked here. A name is checked by the guarded pools'
        resolver, on the very addresses connected to; only through a forward proxy (which
        resolves the name itself) is it resolved here, as the best that can be done."""
        host = target.host or ""
        try:
            addresses = [ipaddress.ip_address(host.strip("[]"))]
        except ValueError:
            if self._proxy.for_url(target.scheme, host, target.port) is None:
                return
            try:
                infos = await asyncio.get_running_loop().getaddrinfo(
                    host, target.port, type=socket.SOCK_STREAM
                )
            except OSError as exc:
                raise UpstreamUnavailable(f"cannot resolve {what} {host}: {exc}") from None
            addresses = [ipaddress.ip_address(str(info[4][0])) for info in infos]
        for address in addresses:
            if not is_public(address):
                raise UpstreamProtocolError(
                    f"refused {what} at the non-public address {address} ({host});"
                    " allow_private_redirects permits it"
                )

    def _note_ratelimit(self, response: aiohttp.ClientResponse) -> None:
        remaining = response.headers.get("ratelimit-remaining")
        if remaining is not None and remaining != self.ratelimit_remaining:
            self.ratelimit_remaining = remaining[:64]
            self.ratelimit_limit = response.headers.get("ratelimit-limit", "")[:64] or None
            log.info(
                "%s rate limit: remaining %s (limit %s)",
                self.name,
                self.ratelimit_remaining,
                self.ratelimit_limit,
            )


def _connect_failed(
    exc: aiohttp.ClientConnectorError, what: str, unreachable: str
) -> UpstreamError:
    """No connection: refused by the guarded resolver (a non-public address), or not
    reachable."""
    if isinstance(exc.os_error, PrivateAddressRefused):
        return UpstreamProtocolError(
            f"refused {what} a non-public address: {exc.os_error};"
            " allow_private_redirects permits it"
        )
    return UpstreamUnavailable(f"{unreachable}: {_describe(exc)}")


def _same_origin(a: URL, b: URL) -> bool:
    return (a.scheme, a.host, a.port) == (b.scheme, b.host, b.port)


def _encoded(response: aiohttp.ClientResponse) -> bool:
    """Does the answer carry a content coding (its Content-Length is not the content's)?"""
    return response.headers.get("Content-Encoding", "identity").strip().lower() != "identity"


def _manifest_info(response: aiohttp.ClientResponse) -> ManifestInfo:
    digest = None
    raw = response.headers.get("Docker-Content-Digest")
    if raw:
        with contextlib.suppress(ValueError):
            digest = parse_digest(raw.strip())
    media_type = response.headers.get("Content-Type", "").split(";")[0].strip()
    size = None if _encoded(response) else response.content_length
    return ManifestInfo(digest, media_type, size)


def _status_error(response: aiohttp.ClientResponse, what: str) -> UpstreamError:
    status = response.status
    if status == 404:
        return UpstreamNotFound(f"{what}: not found upstream")
    if status == 429:
        retry_after = _retry_after(response.headers.get("Retry-After"))
        return UpstreamRateLimited(f"{what}: upstream rate limit reached", retry_after)
    if status in (401, 403):
        return UpstreamAuthFailed(f"{what}: upstream denied access ({status})")
    if status >= 500:
        return UpstreamUnavailable(f"{what}: upstream answered {status}")
    return UpstreamProtocolError(f"{what}: upstream answered {status}")


def _retry_after(value: str | None) -> int | None:
    if value is None:
        return None
    value = value.strip()[:64]
    if value.isascii() and value.isdigit():
        return min(int(value), 86400)
    with contextlib.suppress(TypeError, ValueError, IndexError, OverflowError):
        return max(0, min(86400, int(parsedate_to_datetime(value).timestamp() - time.time())))
    return None


def _content_range(value: str | None) -> tuple[int, int | None]:
    """``bytes 100-199/1000`` → (100, 1000)."""
    if value and value.startswith("bytes "):
        span, _, total = value[6:].partition("/")
        start, _, _ = span.partition("-")
        if start.isdigit():
            return int(start), int(total) if total.isdigit() else None
    raise UpstreamProtocolError(f"unreadable Content-Range {value!r}")


def _next_link(value: str | None) -> str | None:
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
    try:
        async for chunk in response.content.iter_chunked(64 * 1024):
            total += len(chunk)
            if total > limit:
                raise UpstreamProtocolError(f"upstream response larger than {limit} bytes")
            chunks.append(chunk)
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise UpstreamUnavailable(f"upstream response interrupted: {_describe(exc)}") from exc
    return b"".join(chunks)


async def _read_decoded(response: aiohttp.ClientResponse, limit: int) -> bytes:
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


def _describe(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text[:200]
