"""HTTP server plumbing: requests the HTTP parser refuses get the spec's error body too.

aiohttp answers a request it cannot parse (request line or headers too long, too many
headers, an unknown method, control characters) with a plain-text 400 of its own, before
any middleware runs. The runner here gives its connections a handler whose error answer is
the OCI JSON body, so every refusal a client sees has the same shape.
"""

from __future__ import annotations

from http import HTTPStatus

from aiohttp import web
from aiohttp.http_exceptions import BadHttpMethod
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest
from aiohttp.web_server import Server

from registry_mirror.api.errors import RegistryError, error_response

__all__ = ["RegistryRunner"]


class _RegistryRequestHandler(RequestHandler):
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


class _RegistryServer(Server):
    def __call__(self) -> RequestHandler:
        return _RegistryRequestHandler(self, loop=self._loop, **self._kwargs)


class RegistryRunner(web.AppRunner):
    """An AppRunner whose connections answer unparsable requests with OCI errors."""

    async def _make_server(self) -> Server:
        server = await super()._make_server()
        server.__class__ = _RegistryServer
        return server
