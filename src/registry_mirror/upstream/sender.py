"""Sending one upstream's requests: its pools, its forward proxy, redirects, and the
policy on addresses other than the upstream's own (no private targets unless allowed).

A failure leaves as a typed error (:func:`upstream.translate.translated`)."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import time
from typing import Any, Final

import aiohttp
from aiohttp.client import _RequestContextManager
from yarl import URL

from registry_mirror.config import OutboundProxy, redact_url
from registry_mirror.metrics import UpstreamMetrics
from registry_mirror.upstream.errors import UpstreamProtocolError, UpstreamUnavailable
from registry_mirror.upstream.translate import describe, retryable, translated
from registry_mirror.upstream.transport import Sessions, is_public

__all__ = ["MAX_REDIRECTS", "Sender", "same_origin"]

log = logging.getLogger(__name__)

MAX_REDIRECTS: Final = 5


class Sender:
    """The requests of the upstream at ``origin`` (named ``name`` in messages)."""

    def __init__(
        self,
        origin: URL,
        sessions: Sessions,
        *,
        name: str,
        connect_timeout: float,
        read_timeout: float,
        allow_private_redirects: bool,
        proxy: OutboundProxy,
        metrics: UpstreamMetrics | None = None,
    ) -> None:
        self.origin = origin
        self.name = name
        self.metrics = metrics
        self.allow_private_redirects = allow_private_redirects
        self._sessions = sessions
        self._proxy = proxy
        # No ``connect``: it would count the wait for a free pooled connection too, and a
        # download queued behind others is not a connect failure.
        self._timeout = aiohttp.ClientTimeout(
            total=None, connect=None, sock_connect=connect_timeout, sock_read=read_timeout
        )

    def proxy_description(self) -> str | None:
        """The forward proxy of the upstream's own URL, fit for a log (no credentials)."""
        chosen = self._proxy.for_url(self.origin.scheme, self.origin.host or "", self.origin.port)
        return None if chosen is None else redact_url(chosen, mark=True)

    def pool(self, *, blob: bool, guarded: bool) -> aiohttp.ClientSession:
        """The session for metadata or blobs; ``guarded``: public addresses only."""
        if blob:
            return self._sessions.guarded_blobs if guarded else self._sessions.blobs
        return self._sessions.guarded_metadata if guarded else self._sessions.metadata

    def open(
        self, session: aiohttp.ClientSession, method: str, url: URL, headers: dict[str, str]
    ) -> _RequestContextManager:
        """One request as it goes out (no redirect followed, no error translated): to
        await, or to enter with ``async with``."""
        return session.request(
            method,
            url,
            headers=headers,
            allow_redirects=False,
            timeout=self._timeout,
            **self._proxy_args(url),
        )

    async def send(
        self, method: str, url: URL, headers: dict[str, str], auth: str | None, *, blob: bool
    ) -> aiohttp.ClientResponse:
        """One request, following redirects; ``Authorization`` goes only to the upstream
        origin. Other hosts are reached through the guarded pools (public addresses only)
        unless this upstream allows private ones."""
        for _ in range(MAX_REDIRECTS + 1):
            send = dict(headers)
            origin = same_origin(url, self.origin)
            if auth is not None and origin:
                send["Authorization"] = auth
            guarded = not origin and not self.allow_private_redirects
            session = self.pool(blob=blob, guarded=guarded)
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
            if not self.allow_private_redirects and not same_origin(target, self.origin):
                await self.refuse_private(target, "redirect")
            url = target
        raise UpstreamProtocolError(f"more than {MAX_REDIRECTS} redirects from {self.name}")

    async def _send_once(
        self, session: aiohttp.ClientSession, method: str, url: URL, headers: dict[str, str]
    ) -> aiohttp.ClientResponse:
        """Send; a connection failure before any answer is retried once (idempotent reads)."""
        for attempt in (1, 2):
            with translated(
                f"{self.name} unreachable ({url.host})", refused="redirect to", invalid=self.name
            ):
                started = time.perf_counter()
                try:
                    response = await self.open(session, method, url, headers)
                except Exception as exc:
                    self._observed(method, url, None, time.perf_counter() - started, describe(exc))
                    if attempt == 2 or not retryable(exc):
                        raise
                    log.info("retrying %s %s after %s", method, url.path, describe(exc))
                else:
                    self._observed(method, url, response.status, time.perf_counter() - started)
                    return response
            await asyncio.sleep(0.2)
        raise AssertionError("unreachable")

    def _observed(
        self, method: str, url: URL, status: int | None, seconds: float, error: str = ""
    ) -> None:
        """One request's answer (None: none) counted, and logged: the upstream, the
        method, the URL without its query (a CDN's signature stays out of the log), the
        status or the failure, the time to the headers."""
        if self.metrics is not None:
            self.metrics.request(method, status, seconds)
        if not log.isEnabledFor(logging.INFO):
            return
        where = str(url.with_user(None).with_query(None).with_fragment(None))
        outcome = str(status) if status is not None else f"failed ({error})"
        log.info(
            "upstream %s: %s %s %s %.3fs",
            self.name,
            method,
            where,
            outcome,
            seconds,
            extra={
                "line_fields": {
                    "upstream": self.name,
                    "method": method,
                    "url": where,
                    "status": status,
                    "error": error or None,
                    "duration": round(seconds, 6),
                }
            },
        )

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

    async def refuse_private(self, target: URL, what: str) -> None:
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


def same_origin(a: URL, b: URL) -> bool:
    return (a.scheme, a.host, a.port) == (b.scheme, b.host, b.port)
