"""HTTP server plumbing: requests the HTTP parser refuses get the spec's error body too,
and the drain at shutdown.

aiohttp answers a request it cannot parse (request line or headers too long, too many
headers, an unknown method, control characters) with a plain-text 400 of its own, before
any middleware runs. The runner here gives its connections a handler whose error answer is
the OCI JSON body, so every refusal a client sees has the same shape.

:meth:`RegistryRunner.drain` is the graceful stop, as Go's ``http.Server.Shutdown`` (and
so registry:2) does it: the listening sockets close, idle connections close, a connection
with a request under way (or begun: some of its bytes read) finishes that request and
closes (``Connection: close``), all within a grace period; what is left then is cut.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from typing import Final

from aiohttp import web
from aiohttp.http_exceptions import BadHttpMethod
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest
from aiohttp.web_server import Server

from registry_mirror.api.errors import RegistryError, error_response

__all__ = ["CUT_WAIT", "Drained", "RegistryRunner"]

log = logging.getLogger(__name__)

DRAIN_POLL: Final = 0.05  # how often the drain looks whether it is done
CUT_WAIT: Final = 5.0  # after the cut, the handlers get this long to end


class _RegistryRequestHandler(RequestHandler):
    # Bytes of a request have arrived, not yet a whole request: the connection is not
    # idle (the drain lets it finish that request).
    partial = False

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self.partial = bool(data) and not self._messages and not self._request_in_progress

    @property
    def busy(self) -> bool:
        """A request under way, waiting, or begun."""
        return self._request_in_progress or bool(self._messages) or self.partial

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        super().handle_error(request, status, exc, message)  # logging; its text body unused
        if status >= 500:
            error = RegistryError(status, "UNKNOWN", "internal error")
        elif isinstance(exc, BadHttpMethod):
            error = RegistryError(status, "UNSUPPORTED", "the method is not supported")
        else:
            try:
                reason = HTTPStatus(status).phrase
            except ValueError:
                reason = str(status)
            detail = (message or "").strip()[:200] or None
            error = RegistryError(status, "UNKNOWN", f"malformed request ({reason})", detail)
        response = error_response(error, request.method if request.method else "GET")
        response.force_close()
        return response


class _DrainingRequestHandler(_RegistryRequestHandler):
    """A connection during the drain: its request answered, it closes."""

    async def finish_response(
        self, request: BaseRequest, resp: web.StreamResponse, start_time: float | None
    ) -> tuple[web.StreamResponse, bool]:
        # Its headers may have gone out before the drain (a blob streaming): no
        # keep-alive after it all the same, so the connection closes once it is sent.
        resp.force_close()
        return await super().finish_response(request, resp, start_time)


class _Request(web.Request):
    """A request whose connection drains wants its answer to close it: the answer says
    ``Connection: close``, whoever sends its headers (the handlers stream blobs and
    HEAD answers themselves, before :meth:`~RequestHandler.finish_response`)."""

    @property
    def keep_alive(self) -> bool:
        return super().keep_alive and not isinstance(self.protocol, _DrainingRequestHandler)


class _RegistryServer(Server):
    def __call__(self) -> RequestHandler:
        return _RegistryRequestHandler(self, loop=self._loop, **self._kwargs)


@dataclass(frozen=True, slots=True)
class Drained:
    """How a drain went: connections with a request under way at its start, how many
    of them finished, how many were cut at the end of the grace period, and the
    upstream downloads left then (cancelled and discarded by the shutdown)."""

    busy: int
    finished: int
    cut: int
    downloads_left: int


class RegistryRunner(web.AppRunner):
    """An AppRunner whose connections answer unparsable requests with OCI errors, and
    that drains before it stops."""

    async def _make_server(self) -> Server:
        server = await super()._make_server()
        server.__class__ = _RegistryServer
        server.request_factory = functools.partial(self.app._make_request, _cls=_Request)
        return server

    async def drain(
        self, grace: float, downloads: Callable[[], int], cut: asyncio.Event
    ) -> Drained:
        """Stop listening, then wait (up to ``grace`` seconds, or until ``cut`` is set)
        for the requests under way and the ``downloads`` to finish, closing each
        connection as it becomes idle; cut what is left, and log how it went.
        :meth:`cleanup` after."""
        for site in list(self.sites):
            await site.stop()  # the listening sockets close: new connections are refused
        server = self.server
        if server is None:
            return Drained(0, 0, 0, downloads())
        busy = [h for h in server.connections if isinstance(h, _RegistryRequestHandler) and h.busy]
        log.info(
            "draining: %d connections with a request under way, %d idle closed,"
            " %d upstream downloads; grace period %gs",
            len(busy),
            len(server.connections) - len(busy),
            downloads(),
            grace,
        )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        while True:
            self._close_idle(server)
            if not server.connections and not downloads():
                break  # every answer delivered: its connection closed once flushed
            if cut.is_set() or loop.time() >= deadline:
                break
            try:
                async with asyncio.timeout(DRAIN_POLL):
                    await cut.wait()
            except TimeoutError:
                pass  # look again
        remaining = server.connections
        still_busy = [h for h in remaining if isinstance(h, _RegistryRequestHandler) and h.busy]
        for handler in remaining:  # at once, what is still buffered for it dropped
            _abort(handler)
        cut_busy = sum(1 for h in busy if h in still_busy)
        drained = Drained(len(busy), len(busy) - cut_busy, len(still_busy), downloads())
        if drained.cut or drained.downloads_left:
            log.warning(
                "drain %s: %d of %d requests finished, %d connections cut, %d upstream"
                " downloads discarded",
                "cut short" if cut.is_set() else f"grace period of {grace:g}s over",
                drained.finished,
                drained.busy,
                drained.cut,
                drained.downloads_left,
            )
        else:
            log.info("drained: %d requests finished", drained.finished)
        if len(remaining) > len(still_busy):
            log.info(
                "%d connections whose answers were sent closed at the end of the drain"
                " (their clients had not closed them)",
                len(remaining) - len(still_busy),
            )
        return drained

    @staticmethod
    def _close_idle(server: Server) -> None:
        """Close the idle connections now (nothing of theirs is on its way); one with a
        request under way closes once its answer is out (and flushed: a TLS connection
        after its close_notify)."""
        for handler in server.connections:
            if isinstance(handler, _DrainingRequestHandler):
                continue  # closes itself after its request
            if isinstance(handler, _RegistryRequestHandler) and handler.busy:
                handler.__class__ = _DrainingRequestHandler
            elif handler.transport is not None:
                _abort(handler)


def _abort(handler: RequestHandler) -> None:
    """Close a connection at once, dropping whatever is still buffered for it."""
    if handler.transport is not None:
        handler.transport.abort()
    handler.force_close()
